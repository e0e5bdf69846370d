"""Compiled Gauss-Seidel steps: the whole training presentation as one program (training with
``integrator.compile: true``), and unobserved chunks of steps (a solver made with
``make_solver(..., compile=True)``).

What an update of PC / PC-ALM computes before the optimiser: the feed-forward start, ``n_steps``
Gauss-Seidel steps (spec sections 3-4, instantaneous error neurons) and the local read-out of
every weight gradient with the update's statistics. Eagerly that is ~15 torch operators per step
on tensors of a few thousand numbers: a small network is bound by dispatching them, not by
arithmetic. Here the whole presentation is one pure tensor function that ``torch.compile``
turns into a few C++ loops around the two input-sized products.

Two choices make the generated code fast (docs/benchmarks.md, "The whole presentation
compiled"):

* **lanes layout**: inside the program activities are [H, R, N, B], the batch on the vector
  lanes (64 samples fill four AVX-512 registers); a product with an N x N weight matrix is then
  a scalar-times-vector accumulation, never a horizontal reduction;
* **unrolled contractions** for a contracted dimension of at most :data:`UNROLL_MAX`: the sum
  over k is written out as k multiply-adds, which inductor fuses with the surrounding
  element-wise work into one loop nest per step; wider contractions are batched products.

:func:`steps` is the one pure-tensor form of the step that both compiled paths run: training's
:func:`presentation` (start, steps, read-out, statistics) and a compiling solver's chunks of
steps (:func:`steps_batch_layout`, called by :meth:`ctpc.core.integrators.GaussSeidel.advance`
with the step size it is given, its results copied into the solver's carry; ``simulate``
observes the steps it records and does not use it). A program unrolls its steps, so its compile
time grows with them: runs of more than :data:`WHOLE_STEPS_MAX` steps are split into programs of
:data:`CHUNK_STEPS` steps (:func:`pieces`; :func:`run_presentation`: a head with the start, one
middle program called as often as needed, a tail with the read-out), so the compile time of a
long run no longer grows with its length. With ``integrator.compile: loop`` a presentation is
instead one program whose steps are a loop (:func:`presentation_loop`, ``torch.while_loop``):
one step's code, compiled in seconds whatever the length, at 5-25 % more time per update than
unrolled steps. The arithmetic of :func:`steps` is that of
:meth:`ctpc.core.integrators.GaussSeidel.step` and :meth:`ctpc.core.network.Network.weight_gradients` in
another summation order: they agree to round-off (tests/test_fused.py,
float64). Not covered (the caller falls back to the eager loop):
leaky error neurons, explicit RK schemes, continuous plasticity.
"""
from __future__ import annotations

import functools

import torch
from torch._higher_order_ops import scan       # (torch 2.13 has no public name for it yet)

from ctpc.config.schema import ConfigError
from ctpc.core.network import (UNROLL_MAX, dphi, lanes_contract, lanes_input_prediction,
                               lanes_layer_prediction, lanes_output_error, lanes_weight_readout,
                               energy, loss, phi, rms_norm)

# Programs unroll their steps, so their compile time grows with the steps (cold, on the 2-core
# benchmark machine: ~90 s at 64 steps, ~400 s at 256). Up to WHOLE_STEPS_MAX steps a
# presentation (or an unobserved run of a compiling solver) is one program; longer ones run as
# programs of CHUNK_STEPS steps (~70 s to compile whatever the length), 6-16 % slower per
# update than one program (docs/benchmarks.md, "Long presentations in chunks").
WHOLE_STEPS_MAX = 64
CHUNK_STEPS = 16
# dynamo keeps at most this many compiled variants per function; a grid sweep compiles one per
# shape (width x depth x activation ...) in the same worker process
RECOMPILE_LIMIT = 64


def steps(h, lam, r, a, out_err, drive, y_t, w_mid, w_out, b_mid_t, b_out_t, rho, c_h, c_lam, *,
          s_mid: float, s_out: float, activation: str, n_steps: int, inner_steps: int,
          dual_after_last: bool):
    """``n_steps`` Gauss-Seidel steps (the arithmetic of :meth:`ctpc.core.integrators.GaussSeidel.
    step` for instantaneous error neurons), pure, in the lanes layout.

    h, lam, r, a = phi(h) [H, R, N, B]; out_err = y_hat - y [R, O, B]; drive = s_in W_1 x
    [R, N, B]; y_t [R, O, B]; w_mid [H-1, R, N, N], w_out [R, O, N]; b_mid_t [H-1, R, N, 1]
    (b_2 .. b_{L-1}) and b_out_t [R, O, 1] (b_L) with biases, else None; rho, c_h = dt k_h,
    c_lam = dt k_lam: 0-d tensors, or [R, 1, 1] when replicas differ (tensors, so that new
    values never cause a recompilation). ``inner_steps`` primal steps per dual step;
    ``dual_after_last``: whether the last step also updates lam. Returns the new
    (h, lam, r, a, out_err)."""
    n_hid = h.shape[0]
    for step in range(n_steps):
        for _ in range(inner_steps):
            # primal: h -= c_h dL/dh from the carried network pass
            g = lam + rho * r
            slope = dphi(activation, h, a)
            fb = lanes_contract(w_out, out_err, True)         # (y_hat - y) W_L
            if slope is not None:
                fb = fb * slope[-1]
            h = h - c_h * g
            top = h[-1] - (c_h * s_out) * fb
            if n_hid > 1:
                back = lanes_contract(w_mid, g[1:], True)     # g_{l+1} W_{l+1}
                if slope is not None:
                    back = back * slope[:-1]
                low = h[:-1] + c_h * g[1:] + (c_h * s_mid) * back
                h = torch.cat([low, top[None]])
            else:
                h = top[None]
            # the network pass at the new activities
            a = phi(activation, h)
            r_first = (h[0] - drive)[None]
            if n_hid > 1:
                pred = lanes_layer_prediction(h[:-1], a[:-1], w_mid, s_mid, b_mid_t)
                r = torch.cat([r_first, h[1:] - pred])
            else:
                r = r_first
            out_err = lanes_output_error(a[-1], w_out, y_t, s_out, b_out_t)
        if dual_after_last or step + 1 < n_steps:
            lam = lam + c_lam * r
    return h, lam, r, a, out_err


def steps_batch_layout(h, lam, r, a, out_err, drive, y, w_mid, w_out, rho, c_h, c_lam,
                       b_hid=None, b_out=None, **static):
    """:func:`steps` on tensors in the simulator's layout (h, lam, r, a [H, R, B, N], out_err
    and y [R, B, O], drive [R, B, N]; biases b_hid [H, R, 1, N], b_out [R, 1, O] or None):
    transposed in and out inside the program."""
    tr = lambda t: None if t is None else t.transpose(-1, -2)
    b_mid_t = None if b_hid is None else tr(b_hid[1:])
    out = steps(tr(h), tr(lam), tr(r), tr(a), tr(out_err), tr(drive), tr(y), w_mid, w_out,
                b_mid_t, tr(b_out), rho, c_h, c_lam, **static)
    return tuple(tr(t) for t in out)


def presentation(w_in, w_mid, w_out, b_hid, b_out, x, y, rho, c_h, c_lam, *, s_in: float,
                 s_mid: float,
                 s_out: float, activation: str, n_steps: int, inner_steps: int,
                 final_dual: bool):
    """One presentation of R replicas, pure (nothing is modified): the feed-forward start
    (lam = 0), :func:`steps`, the read-out.

    w_in [R, N, D], w_mid [H-1, R, N, N], w_out [R, O, N]; b_hid [H, R, 1, N], b_out [R, 1, O]
    with biases, else None (the :class:`ctpc.core.network.Weights` layout); x [R, B, D],
    y [R, B, O]; rates as in :func:`steps`; ``final_dual``: whether the last step also updates
    lam (weight_credit_timing post_dual).

    Returns (grads, loss0, energy, res_norm, lam_norm, credit_norm): grads, the tensors of
    dL_rho/dW (and dL_rho/db with biases) in the :class:`~ctpc.core.network.Weights` layout,
    batch means, by the local read-out at the final state; loss0 [R]: 1/2 |y_hat - y|^2 at the feed-forward
    start; energy [R]: L_rho at the end; res_norm, lam_norm, credit_norm [H, R]: RMS over the
    batch of each sample's norm at the end (what :class:`ctpc.training.rules.UpdateStats`
    holds). :func:`run_presentation` computes the same as several programs when ``n_steps`` >
    :data:`WHOLE_STEPS_MAX`."""
    scales = {"s_in": s_in, "s_mid": s_mid, "s_out": s_out, "activation": activation,
              "inner_steps": inner_steps}
    start = presentation_head(w_in, w_mid, w_out, b_hid, b_out, x, y, rho, c_h, c_lam,
                              n_steps=0, **scales)
    return presentation_tail(*start, x, w_mid, w_out, rho, c_h, c_lam, n_steps=n_steps,
                             final_dual=final_dual, **scales)


def presentation_head(w_in, w_mid, w_out, b_hid, b_out, x, y, rho, c_h, c_lam, *, s_in: float,
                      s_mid: float, s_out: float, activation: str, n_steps: int,
                      inner_steps: int, scan_layers: bool = False):
    """The first program of a chunked presentation: the feed-forward start and ``n_steps``
    steps (the last of them updates lam: more steps follow). Arguments as
    :func:`presentation` (``scan_layers`` as :func:`_start`); returns the carry (h, lam, r, a,
    out_err [lanes layout], drive, y_t, the biases in lanes b_mid_t, b_out_t) and loss0 [R]."""
    h, a, out_err, drive, y_t, b_mid_t, b_out_t, loss0 = _start(
        w_in, w_mid, w_out, b_hid, b_out, x, y, s_in=s_in, s_mid=s_mid, s_out=s_out,
        activation=activation, scan_layers=scan_layers)
    h, lam, r, a, out_err = steps(
        h, torch.zeros_like(h), torch.zeros_like(h), a, out_err, drive, y_t, w_mid, w_out,
        b_mid_t, b_out_t, rho, c_h, c_lam, s_mid=s_mid, s_out=s_out, activation=activation,
        n_steps=n_steps, inner_steps=inner_steps, dual_after_last=True)
    return h, lam, r, a, out_err, drive, y_t, b_mid_t, b_out_t, loss0


def presentation_tail(h, lam, r, a, out_err, drive, y_t, b_mid_t, b_out_t, loss0, x, w_mid,
                      w_out, rho, c_h, c_lam, *, s_in: float, s_mid: float, s_out: float,
                      activation: str, n_steps: int, inner_steps: int, final_dual: bool):
    """The last program of a chunked presentation: ``n_steps`` steps from the carry of
    :func:`presentation_head` (or of the middle chunks, :func:`steps`) and the read-out;
    returns what :func:`presentation` returns."""
    h, lam, r, a, out_err = steps(
        h, lam, r, a, out_err, drive, y_t, w_mid, w_out, b_mid_t, b_out_t, rho, c_h, c_lam,
        s_mid=s_mid, s_out=s_out, activation=activation, n_steps=n_steps,
        inner_steps=inner_steps, dual_after_last=final_dual)
    return _readout(h, lam, r, a, out_err, x, rho, loss0, s_in=s_in, s_mid=s_mid, s_out=s_out,
                    bias=b_out_t is not None)


def presentation_loop(w_in, w_mid, w_out, b_hid, b_out, x, y, rho, c_h, c_lam, *, s_in: float,
                      s_mid: float, s_out: float, activation: str, n_steps: int,
                      inner_steps: int, final_dual: bool):
    """:func:`presentation` with its steps as a loop inside the program instead of unrolled:
    the start (:func:`presentation_head` of no steps, its layers a scan), the first
    ``n_steps - 1`` steps (each updating lam) as a ``torch.while_loop`` over one step, then
    :func:`presentation_tail` of the last step. The program holds the code of two steps and
    one layer whatever ``n_steps`` and the depth, so it compiles in seconds; each iteration
    allocates its outputs and is not fused with the next (5-25 % more time per update,
    docs/benchmarks.md). Same arguments, returns and arithmetic as :func:`presentation`."""
    step_kw = {"s_mid": s_mid, "s_out": s_out, "activation": activation,
               "inner_steps": inner_steps}
    *carry, drive, y_t, b_mid_t, b_out_t, loss0 = presentation_head(
        w_in, w_mid, w_out, b_hid, b_out, x, y, rho, c_h, c_lam, s_in=s_in, n_steps=0,
        scan_layers=True, **step_kw)

    def body(i, *carry):
        return (i + 1, *steps(*carry, drive, y_t, w_mid, w_out, b_mid_t, b_out_t, rho, c_h,
                              c_lam, n_steps=1, dual_after_last=True, **step_kw))
    first = torch.zeros((), dtype=torch.int64, device=drive.device)
    _, *carry = torch.while_loop(lambda i, *_: i < n_steps - 1, body, (first, *carry))
    return presentation_tail(*carry, drive, y_t, b_mid_t, b_out_t, loss0, x, w_mid, w_out, rho,
                             c_h, c_lam, s_in=s_in, n_steps=1, final_dual=final_dual,
                             **step_kw)


def pieces(n_steps: int) -> list[int]:
    """The programs ``n_steps`` unobserved steps run as: one of ``n_steps`` up to
    :data:`WHOLE_STEPS_MAX`, else programs of :data:`CHUNK_STEPS` steps and one of the rest."""
    if n_steps <= WHOLE_STEPS_MAX:
        return [n_steps]
    full, rest = divmod(n_steps, CHUNK_STEPS)
    return [CHUNK_STEPS] * full + ([rest] if rest else [])


def run_presentation(w_in, w_mid, w_out, b_hid, b_out, x, y, rho, c_h, c_lam, *, device_type: str,
                     small: bool, mode: str = "unrolled", s_in: float, s_mid: float,
                     s_out: float, activation: str, n_steps: int, inner_steps: int,
                     final_dual: bool):
    """:func:`presentation`, compiled. ``mode`` ``"unrolled"``: up to :data:`WHOLE_STEPS_MAX`
    steps it is one program; a longer presentation runs as a head (the start and the first
    :data:`CHUNK_STEPS` steps), middle chunks of :data:`CHUNK_STEPS` steps (one program,
    called as often as needed) and a tail (the last steps and the read-out), so its compile
    time does not grow with the run length (programs unroll their steps). ``mode``
    ``"loop"``: one program of any length, :func:`presentation_loop`. ``device_type``,
    ``small``: as :func:`compiled`; the other arguments as :func:`presentation`."""
    program = lambda name: compiled(name, device_type, small)
    step_kw = {"s_mid": s_mid, "s_out": s_out, "activation": activation,
               "inner_steps": inner_steps}
    if mode == "loop":
        return program("presentation_loop")(w_in, w_mid, w_out, b_hid, b_out, x, y, rho, c_h,
                                            c_lam, s_in=s_in, n_steps=n_steps,
                                            final_dual=final_dual, **step_kw)
    if mode != "unrolled":
        raise ValueError(f"mode must be 'unrolled' or 'loop', got {mode!r}")
    programs = pieces(n_steps)
    if len(programs) == 1:
        return program("presentation")(w_in, w_mid, w_out, b_hid, b_out, x, y, rho, c_h, c_lam,
                                       s_in=s_in, n_steps=n_steps, final_dual=final_dual,
                                       **step_kw)
    head, *middle, tail = programs
    *carry, drive, y_t, b_mid_t, b_out_t, loss0 = program("presentation_head")(
        w_in, w_mid, w_out, b_hid, b_out, x, y, rho, c_h, c_lam, s_in=s_in, n_steps=head,
        **step_kw)
    for n in middle:
        carry = program("steps")(*carry, drive, y_t, w_mid, w_out, b_mid_t, b_out_t, rho, c_h,
                                 c_lam, n_steps=n, dual_after_last=True, **step_kw)
    return program("presentation_tail")(*carry, drive, y_t, b_mid_t, b_out_t, loss0, x, w_mid,
                                        w_out, rho, c_h, c_lam, s_in=s_in, n_steps=tail,
                                        final_dual=final_dual, **step_kw)


def _start(w_in, w_mid, w_out, b_hid, b_out, x, y, *, s_in: float, s_mid: float, s_out: float,
           activation: str, scan_layers: bool = False):
    """The feed-forward start (r = 0, lam = 0) in the lanes layout: h, a [H, R, N, B],
    out_err [R, O, B], drive = s_in W_1 x (+ b_1) [R, N, B], y_t [R, O, B], the biases in
    lanes b_mid_t [H-1, R, N, 1] and b_out_t [R, O, 1] (None without biases), loss0 [R].
    ``scan_layers``: the layers as a ``scan`` over ``w_mid`` (one layer's code, looped by the
    program) instead of unrolled: the same numbers; a deep narrow network's unrolled start
    (L - 2 unrolled products) would otherwise dominate a looped program's compile."""
    tr = lambda t: None if t is None else t.transpose(-1, -2)
    b_hid_t, b_out_t = tr(b_hid), tr(b_out)
    b_mid_t = None if b_hid_t is None else b_hid_t[1:]
    y_t = y.transpose(1, 2)                                   # [R, O, B]
    drive = lanes_input_prediction(w_in, x.transpose(1, 2), s_in,
                                   None if b_hid_t is None else b_hid_t[0])   # [R, N, B]
    layer = lambda below, w, b: lanes_layer_prediction(below, phi(activation, below), w, s_mid,
                                                       b)
    if scan_layers and w_mid.shape[0]:
        def scanned(below, w_b):           # w_b: W_l, or (W_l, b_l) with biases
            above = layer(below, *w_b) if isinstance(w_b, tuple) else layer(below, w_b, None)
            return above, above.clone()     # the carry, and the output (they may not alias)
        xs = w_mid if b_mid_t is None else (w_mid, b_mid_t)
        h = torch.cat([drive[None], scan(scanned, drive, xs)[1]])
    else:
        layers = [drive]
        for l in range(w_mid.shape[0]):                      # the feed-forward start (r = 0)
            layers.append(layer(layers[-1], w_mid[l], None if b_mid_t is None else b_mid_t[l]))
        h = torch.stack(layers)                               # [H, R, N, B]
    a = phi(activation, h)
    out_err = lanes_output_error(a[-1], w_out, y_t, s_out, b_out_t)   # y_hat - y, [R, O, B]
    return h, a, out_err, drive, y_t, b_mid_t, b_out_t, loss(out_err, out_axis=-2)


def _readout(h, lam, r, a, out_err, x, rho, loss0, *, s_in: float, s_mid: float, s_out: float,
             bias: bool):
    """The read-out and the update's statistics at the final state (see :func:`presentation`)."""
    g = lam + rho * r
    grads = lanes_weight_readout(g, a, out_err, x, (s_in, s_mid, s_out), bias)
    # L_rho = l + (sum lam r + rho/2 sum r^2) / B per replica (ctpc.core.network.energy)
    rho_r = rho.reshape(-1) if rho.dim() else rho
    dims = (0, 2, 3)                                          # layers, units, samples
    lagrangian = energy(loss(out_err, out_axis=-2), (lam * r).sum(dims), r.square().sum(dims),
                        rho_r, x.shape[1])
    rms = lambda t: rms_norm(t.transpose(-1, -2))     # rms_norm reads [..., B, N]
    return grads, loss0, lagrangian, rms(r), rms(lam), rms(g)


@functools.cache
def compiled(fn_name: str, device_type: str, small: bool):
    """The compiled ``fn_name`` (:func:`presentation`, :func:`presentation_head`,
    :func:`steps`, :func:`presentation_tail`, :func:`steps_batch_layout` or
    :func:`presentation_loop`) for a
    device type. On the CPU, for small widths (``small``: every contraction unrolled), the
    generated code runs on one thread with a C++ wrapper: its loops take a few microseconds
    each, less than waking a second thread, and the wrapper saves the Python call of every
    kernel. (One compiled variant per shape and static argument, made on first call; the
    inductor cache makes later processes' compiles faster.)

    The program always runs without autograd (it is the local learning rule; nothing
    differentiates through it): grad mode is one of dynamo's guards, and a training's first
    call (the alignment probe at update 0, outside ``no_grad``) used to build a second
    variant of every program. The variant limit is the program's own: dynamo's global setting
    is per thread in torch 2.13, so a Dask worker's task thread did not see it and a grid
    sweep failed at its 9th variant."""
    options = {"cpp_wrapper": True, "cpp.threads": 1} if device_type == "cpu" and small else {}
    fn = {f.__name__: f for f in (presentation, presentation_head, presentation_tail, steps,
                                  steps_batch_layout, presentation_loop)}[fn_name]
    program = torch.compile(fn, dynamic=False, fullgraph=True, options=options,
                            recompile_limit=RECOMPILE_LIMIT)

    @functools.wraps(fn)
    def run(*args, **kwargs):
        with torch.no_grad():
            return program(*args, **kwargs)
    return run


def check_compiler() -> None:
    """Raise :class:`ctpc.config.schema.ConfigError` (exit 2) if inductor finds no C++ compiler: on
    the CPU the compiled programs are C++ built on first use (checked before a run starts)."""
    from torch._inductor import cpp_builder, exc
    try:
        cpp_builder.get_cpp_compiler()
    except (exc.InvalidCxxCompiler, RuntimeError) as err:
        raise ConfigError(
            "integrator.compile: true builds C++ code on the CPU, but no C++ compiler was found "
            f"({err.__class__.__name__}); install one (e.g. apt install g++, or set CXX) or set "
            "integrator.compile: false") from None


# glibc's mallopt parameters (malloc.h)
_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD = -1, -3


def keep_freed_buffers(mmap_mb: int = 64, trim_mb: int = 128) -> bool:
    """Make this process's C allocator (glibc) serve buffers of up to ``mmap_mb`` MiB from its
    heap and keep up to ``trim_mb`` MiB of freed heap, instead of mapping fresh pages for every
    large buffer and returning them when it is freed. Returns whether it applied (False without
    glibc, e.g. on macOS).

    Why: a compiled program allocates its temporaries per call (a looped program, per step:
    several state-sized buffers), where the eager step reuses preallocated ones. glibc normally
    learns to keep such buffers (its mmap threshold rises with the first large free), but
    setting ``MALLOC_TRIM_THRESHOLD_``, as Dask does for its workers (64 KiB), freezes that
    threshold at 128 KiB: every buffer is then mapped, page-faulted and unmapped again, and
    ``compile: loop`` ran 5x slower at (N, L) = (32, 64) in a sweep worker than alone
    (docs/benchmarks.md). Called when training sets up a compiled rule; the eager paths do not
    need it."""
    import ctypes
    import ctypes.util
    name = ctypes.util.find_library("c")
    try:
        libc = ctypes.CDLL(name)
        mallopt = libc.mallopt
    except (OSError, AttributeError, TypeError):
        return False
    return bool(mallopt(_M_MMAP_THRESHOLD, mmap_mb << 20)) and bool(
        mallopt(_M_TRIM_THRESHOLD, trim_mb << 20))


def is_small(width: int, output_dim: int) -> bool:
    """Whether every contraction of a step is unrolled (width and output at most
    :data:`UNROLL_MAX`)."""
    return width <= UNROLL_MAX and output_dim <= UNROLL_MAX
