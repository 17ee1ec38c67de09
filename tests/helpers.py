"""Assertion helper shared by the test files (imported as `from helpers import assert_close`)."""
import torch


def assert_close(got, want, atol, rtol=0.0, what=""):
    """|got − want| <= atol + rtol·|want| element-wise, in float64, with a report of how many elements differ and
    the first few (index, got, want); shapes must match; NaN/inf on either side always counts as a difference."""
    as64 = lambda x: (x.detach() if torch.is_tensor(x) else torch.as_tensor(x, dtype=torch.float64)).to(
        "cpu", torch.float64)                                      # Python numbers keep their float64 value
    got, want = as64(got), as64(want)
    assert got.shape == want.shape, f"{what}: shape {tuple(got.shape)} != {tuple(want.shape)}"
    bad = ~torch.isfinite(got) | ~torch.isfinite(want) | ((got - want).abs() > atol + rtol * want.abs())
    if bad.any():
        first = [(tuple(i), got[tuple(i)].item(), want[tuple(i)].item()) for i in bad.nonzero()[:5].tolist()]
        raise AssertionError(f"{what}: {int(bad.sum())}/{bad.numel()} elements differ (atol {atol:.3g}, rtol {rtol}); "
                             f"first (index, got, want): {first}")
