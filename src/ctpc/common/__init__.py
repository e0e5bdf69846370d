"""Facts and plumbing every layer may use, with no dependency on the rest of ctpc: the version,
the result variables' labels, the time-stepping schemes' declared facts, and Ctrl-C/SIGTERM
handling. Pure Python."""
