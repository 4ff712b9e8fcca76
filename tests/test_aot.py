"""Compiling for a GPU without one (bptt_cli.runner.aot, bptt-run --dry-run --target): the
kernel count of optimized HLO against a module counted by hand, and the command line's errors.
`make gpu-compile` (in CI) compiles every paper and beyond program for an H100 and an A100."""

import importlib.util

import pytest
from clitools import cli

from bptt_cli.runner import aot

# Written in the form XLA's GPU compiler prints optimized modules. Kernels, by hand:
# inner body: fusion, cuBLAS custom call, copy = 3; inner condition: an unfused compare = 1;
# inner loop (8 trips): 8·3 + 9·1 = 33.
# outer body: inner loop 33 + conditional (the larger branch: 2) + fusion 1 + async pair 1 = 37;
# outer condition 1; the outer loop's trip count is unknown (the epoch loop): once, 37 + 1 = 38.
# entry: outer loop 38 + fusion 1 + copy-start/copy-done 1 = 40 (parameter, constant, tuple,
# bitcast and get-tuple-element are not kernels).
MODULE = """HloModule jit_chunk, is_scheduled=true, entry_computation_layout={(f32[4]{0})->f32[4]{0}}

%fused_add (param_0: f32[4]) -> f32[4] {
  %param_0 = f32[4]{0} parameter(0)
  ROOT %add.1 = f32[4]{0} add(f32[4]{0} %param_0, f32[4]{0} %param_0)
}

%inner_body (arg: (s32[], f32[4])) -> (s32[], f32[4]) {
  %arg = (s32[], f32[4]{0}) parameter(0)
  %gte.0 = s32[] get-tuple-element((s32[], f32[4]{0}) %arg), index=0
  %gte.1 = f32[4]{0} get-tuple-element((s32[], f32[4]{0}) %arg), index=1
  %fusion.1 = f32[4]{0} fusion(f32[4]{0} %gte.1), kind=kLoop, calls=%fused_add
  %custom-call.1 = (f32[4]{0}, s8[16]{0}) custom-call(f32[4]{0} %fusion.1), custom_call_target="__cublas$gemm"
  %gte.2 = f32[4]{0} get-tuple-element((f32[4]{0}, s8[16]{0}) %custom-call.1), index=0
  %copy.1 = f32[4]{0} copy(f32[4]{0} %gte.2)
  ROOT %tuple.1 = (s32[], f32[4]{0}) tuple(s32[] %gte.0, f32[4]{0} %copy.1)
}

%inner_cond (arg.1: (s32[], f32[4])) -> pred[] {
  %arg.1 = (s32[], f32[4]{0}) parameter(0)
  %gte.3 = s32[] get-tuple-element((s32[], f32[4]{0}) %arg.1), index=0
  %constant.1 = s32[] constant(8)
  ROOT %compare.1 = pred[] compare(s32[] %gte.3, s32[] %constant.1), direction=LT
}

%branch_a (p: f32[4]) -> f32[4] {
  %p = f32[4]{0} parameter(0)
  %fusion.a1 = f32[4]{0} fusion(f32[4]{0} %p), kind=kLoop, calls=%fused_add
  ROOT %fusion.a2 = f32[4]{0} fusion(f32[4]{0} %fusion.a1), kind=kLoop, calls=%fused_add
}

%branch_b (q: f32[4]) -> f32[4] {
  %q = f32[4]{0} parameter(0)
  ROOT %fusion.b1 = f32[4]{0} fusion(f32[4]{0} %q), kind=kLoop, calls=%fused_add
}

%outer_body (arg.2: (s32[], f32[4])) -> (s32[], f32[4]) {
  %arg.2 = (s32[], f32[4]{0}) parameter(0)
  %while.inner = (s32[], f32[4]{0}) while((s32[], f32[4]{0}) %arg.2), condition=%inner_cond, body=%inner_body, backend_config={"known_trip_count":{"n":"8"},"known_init_step":{"init":"0","step":"1"}}
  %gte.4 = s32[] get-tuple-element((s32[], f32[4]{0}) %while.inner), index=0
  %gte.5 = f32[4]{0} get-tuple-element((s32[], f32[4]{0}) %while.inner), index=1
  %constant.2 = s32[] constant(0)
  %conditional.1 = f32[4]{0} conditional(s32[] %constant.2, f32[4]{0} %gte.5, f32[4]{0} %gte.5), branch_computations={%branch_a, %branch_b}
  %fusion.2 = f32[4]{0} fusion(f32[4]{0} %conditional.1), kind=kLoop, calls=%fused_add
  %async-start.1 = ((f32[4]{0}), f32[4]{0}, s32[]) fusion-start(f32[4]{0} %fusion.2), kind=kLoop, calls=%fused_add
  %async-done.1 = f32[4]{0} async-done(((f32[4]{0}), f32[4]{0}, s32[]) %async-start.1)
  ROOT %tuple.2 = (s32[], f32[4]{0}) tuple(s32[] %gte.4, f32[4]{0} %async-done.1)
}

%outer_cond (arg.3: (s32[], f32[4])) -> pred[] {
  %arg.3 = (s32[], f32[4]{0}) parameter(0)
  %gte.6 = s32[] get-tuple-element((s32[], f32[4]{0}) %arg.3), index=0
  %constant.3 = s32[] constant(3)
  ROOT %compare.2 = pred[] compare(s32[] %gte.6, s32[] %constant.3), direction=LT
}

ENTRY %main.9 (Arg_0.1: f32[4]) -> f32[4] {
  %Arg_0.1 = f32[4]{0} parameter(0)
  %bitcast.1 = f32[4]{0} bitcast(f32[4]{0} %Arg_0.1)
  %fusion.3 = f32[4]{0} fusion(f32[4]{0} %bitcast.1), kind=kLoop, calls=%fused_add
  %copy-start.1 = (f32[4]{0}, f32[4]{0}, u32[]) copy-start(f32[4]{0} %fusion.3)
  %copy-done.1 = f32[4]{0} copy-done((f32[4]{0}, f32[4]{0}, u32[]) %copy-start.1)
  %constant.4 = s32[] constant(0)
  %tuple.3 = (s32[], f32[4]{0}) tuple(s32[] %constant.4, f32[4]{0} %copy-done.1)
  %while.outer = (s32[], f32[4]{0}) while((s32[], f32[4]{0}) %tuple.3), condition=%outer_cond, body=%outer_body
  ROOT %gte.7 = f32[4]{0} get-tuple-element((s32[], f32[4]{0}) %while.outer), index=1
}
"""


def test_kernel_launches_of_a_module_counted_by_hand():
    entry, computations = aot.parse_hlo(MODULE)
    assert entry == "main.9" and len(computations) == 8
    assert [i.opcode for i in computations["inner_body"]] == [
        "parameter",
        "get-tuple-element",
        "get-tuple-element",
        "fusion",
        "custom-call",
        "get-tuple-element",
        "copy",
        "tuple",
    ]
    assert aot.kernel_launches(MODULE) == 40


def test_known_trip_counts_multiply():
    """Changing the inner loop's trip count from 8 to 16 adds 8·3 + 8·1 kernels."""
    longer = MODULE.replace('{"n":"8"}', '{"n":"16"}')
    assert aot.kernel_launches(longer) == 40 + 8 * 3 + 8 * 1


def test_targets_describe_their_memory():
    assert aot.TARGETS == ("a100", "h100")
    assert aot.device_memory("h100") == 84978434048 and aot.device_memory("a100") == 85100068864
    with pytest.raises(aot.TargetError, match="unknown target 'v100'; allowed: a100, h100"):
        aot.target_config("v100")


HAS_CUDA_PLUGIN = importlib.util.find_spec("jax_plugins") is not None and any(
    importlib.util.find_spec(f"jax_plugins.xla_cuda{v}") for v in (12, 13)
)


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (("--target", "v100", "--dry-run"), "unknown target 'v100'; allowed: a100, h100"),
        (
            ("--target", "h100"),
            "--target h100 compiles for a GPU without running anything; use it with --dry-run",
        ),
        pytest.param(
            ("--target", "h100", "--dry-run"),
            "cannot compile for h100: jax's CUDA plugin is missing",
            marks=pytest.mark.skipif(HAS_CUDA_PLUGIN, reason="jax's CUDA plugin is installed here"),
        ),
    ],
)
def test_target_errors_are_one_line_exit_2(args, message, tmp_path, jax_cache):
    done = cli(
        "bptt-run",
        "cartpole",
        "--scale",
        "smoke",
        *args,
        "--out",
        tmp_path / "out",
        cache=jax_cache,
        cwd=tmp_path,
    )
    assert done.returncode == 2
    errors = [line for line in done.stderr.splitlines() if line.startswith("bptt-run: error:")]
    assert len(errors) == 1 and message in errors[0], done.stderr
    assert not (tmp_path / "out").exists()
