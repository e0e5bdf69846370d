"""What a run produces, without torch: the backend-neutral result (:mod:`.run_result`), its size
in memory (:mod:`.memory`), the labelled dataset and its netCDF file (:mod:`.dataset`), and
record streams for runs larger than memory (:mod:`.stream`)."""
