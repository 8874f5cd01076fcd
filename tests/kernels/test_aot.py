"""Every kernel compiles for sm_80 and sm_90 with the launches the dispatcher makes."""

from __future__ import annotations


def compile_all() -> list[tuple[str, str, int, dict[str, int]]]:
    from vlm_kernels.aot import compile_launch, dispatcher_launches, resource_usage

    results = []
    for case in dispatcher_launches():
        for launch in case.launches:
            for arch in (80, 90):
                compiled = compile_launch(launch, arch)
                assert compiled.asm["cubin"], f"{case.name}: no cubin for sm_{arch}"
                results.append((case.name, compiled.name, arch, resource_usage(compiled)))
    return results


def test_every_kernel_compiles_for_sm80_and_sm90(compiled):
    results = compiled(compile_all)
    kernels = {(name, arch) for _, name, arch, _ in results}
    assert kernels == {
        (kernel, arch)
        for kernel in (
            "_linear_logprob_forward_kernel",
            "_linear_logprob_backward_kernel",
            "_linear_argmax_kernel",
            "_diffusion_noise_kernel",
        )
        for arch in (80, 90)
    }
    for case, name, arch, usage in results:
        # The dispatcher's tiles were chosen to compile without register spills on both targets.
        assert usage["registers"] > 0 and usage["spill_bytes"] == 0, (case, name, arch, usage)

