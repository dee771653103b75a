"""The pruned search (issue 16): projection bounds, tiles, the float32 tier and the saved index.

Every method, basis and tier must equal float64 brute force, on adversarial data too; every bound
must hold on every pair.
"""
import json
import math

import numpy as np
import pytest
import torch

from workbench.data.readahead import AheadReader
from workbench.data.store import SliceStore, StoreWriter
from workbench.errors import WorkbenchError
from workbench.search import CorrelationIndex, topk_correlation
from workbench.search import index as index_module
from workbench.search import kernel, projection, pruned, tiles
from workbench.search.index import RawReader
from workbench.search.normalise import normalise


def truth(q, r, k):
    """float64 numpy brute force, ties to the lower index."""
    def unit(x):
        x = x.reshape(len(x), -1).astype(np.float64)
        x = x - x.mean(1, keepdims=True)
        return x / np.linalg.norm(x, axis=1, keepdims=True)

    s = unit(q) @ unit(r).T
    idx = np.argsort(-s, axis=1, kind="stable")[:, :k]
    return np.take_along_axis(s, idx, 1), idx, s


def slices(n_subjects=12, depth=16, size=16, seed=0):
    """Smooth volumes sliced along z: neighbouring slices nearly equal, as in brain MRI."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:size, 0:size] / size
    out = []
    for _ in range(n_subjects):
        f = rng.uniform(1, 3, size=(4, 3))
        for z in range(depth):
            t = z / depth
            img = [np.sin(f[c, 0] * xx * 3 + t * f[c, 1]) * np.cos(f[c, 2] * yy * 3 - t) for c in range(2)]
            out.append(np.stack(img))
    x = np.asarray(out, dtype=np.float32)
    return x + 0.01 * rng.standard_normal(x.shape).astype(np.float32)


@pytest.fixture(scope="module")
def brainlike():
    ref = slices()
    rng = np.random.default_rng(1)
    copies = ref[::9] * rng.uniform(0.95, 1.05, size=(len(ref[::9]), 2, 1, 1)).astype(np.float32)
    copies += 0.02 * rng.standard_normal(copies.shape).astype(np.float32)
    novel = slices(n_subjects=2, seed=5)
    return np.concatenate([copies, novel]).astype(np.float32), ref


def unit64(x):
    return normalise(x.reshape(len(x), -1), torch.float64)[0]


# -- the bounds hold on every pair -----------------------------------------------------------
@pytest.mark.parametrize("case", ["random", "nearly-equal", "between-clusters", "brainlike", "wide"])
def test_projection_bound_holds_for_every_pair(case, brainlike):
    rng = np.random.default_rng(3)
    if case == "random":
        ref, q = rng.random((80, 1, 8, 8)), rng.random((20, 1, 8, 8))
    elif case == "nearly-equal":  # all references nearly equal: every bound is near 1
        base = rng.random((1, 1, 8, 8))
        ref = base + 1e-5 * rng.standard_normal((80, 1, 8, 8))
        q = base + 1e-5 * rng.standard_normal((20, 1, 8, 8))
    elif case == "between-clusters":  # queries equidistant from two clusters
        a, b = rng.random((1, 1, 8, 8)), rng.random((1, 1, 8, 8))
        ref = np.concatenate([a + 0.01 * rng.standard_normal((40, 1, 8, 8)), b + 0.01 * rng.standard_normal((40, 1, 8, 8))])
        q = (a + b) / 2 + 1e-4 * rng.standard_normal((20, 1, 8, 8))
    elif case == "wide":  # 2 x 64 x 64: 32 slices of codes, summed in groups (CODE_GROUP)
        ref, q = slices(n_subjects=4, size=64), slices(n_subjects=1, size=64, seed=9)
    else:
        q, ref = brainlike
    x, y = unit64(np.asarray(q, np.float32)), unit64(np.asarray(ref, np.float32))
    exact = (x @ y.T).numpy()
    for d in (1, 4, 16, 64):
        w = projection.fit_basis(y[: min(len(y), 40)], d)
        delta = projection.basis_delta(w)
        cq, rq, sq = projection.codes(x, w, delta)
        cr, rr, sr = projection.codes(y, w, delta)
        ub = projection.upper_bounds(cq, rq, sq, cr, rr, sr).double().numpy()
        assert (ub >= exact).all(), f"d={d}: bound below r by {np.max(exact - ub):.2e}"
        # eta bounds the code error: the codes against W^T x in float64 with W's float32 numbers
        want = x @ w.double()
        assert ((cq.double() - want).norm(dim=1) <= (sq - 1e-6) / 1.001).all()
        # rho bounds ||x - Px|| (P the exact projection onto span W)
        q_, _ = torch.linalg.qr(w.double())
        resid = (x - (x @ q_) @ q_.T).norm(dim=1)
        assert (rq >= resid).all()
    assert delta < 1e-5  # the float32 basis is orthonormal to ~1e-7


def test_block_basis_is_orthonormal_and_its_bound_holds(brainlike):
    from workbench.search.sources import Selector

    q, ref = brainlike
    sel = Selector(ref.shape[1:], None, None)
    w = projection.block_basis(sel, ref.shape[1:], 4)
    assert w.shape == (2 * 16 * 16, 2 * 4 * 4)
    delta = projection.basis_delta(w)
    assert delta < 1e-6
    x, y = unit64(q), unit64(ref)
    ub = projection.upper_bounds(*projection.codes(x, w, delta), *projection.codes(y, w, delta)).double()
    assert (ub >= x @ y.T).all()


@pytest.mark.parametrize("dim", [10, 1024, 3000])
def test_float32_tier_bound_holds(dim):
    g = torch.Generator().manual_seed(dim)
    x = torch.nn.functional.normalize(torch.randn(12, dim, dtype=torch.float64, generator=g) + 3, dim=1)
    y = torch.nn.functional.normalize(torch.randn(30, dim, dtype=torch.float64, generator=g) + 3, dim=1)
    s = tiles.tile_product(tiles.chunked(x.float()), torch.arange(12), y.float()).double()
    err = (s - x @ y.T).abs().max().item()
    assert err <= tiles.tier_error_bound(dim)
    assert tiles.tier_error_bound(dim) < 1e-4


@pytest.mark.parametrize("dim", [10, 3000, 9000])
def test_bf16_rows_widened_in_the_tiles_stay_within_their_row_bound(dim):
    """A bf16 index's tiles multiply float32 queries with its bf16 rows widened to float32 (in the
    padded layout of the brute screen): every pair is within the row's ``row_error``."""
    g = torch.Generator().manual_seed(dim)
    images = (torch.randn(40, 1, 1, dim, dtype=torch.float64, generator=g) + 3).float().numpy()
    queries = (torch.randn(12, 1, 1, dim, dtype=torch.float64, generator=g) + 3).float().numpy()
    index = CorrelationIndex(images, precision="bf16", basis_dim=4)
    assert index.vectors.dtype == torch.bfloat16 and not index.from_disk
    rows = np.arange(40)
    x, y = unit64(queries), unit64(images)
    s = tiles.tile_product(tiles.chunked(x), torch.arange(12), index.rows32(rows)).double()
    err = (s - x @ y.T).abs()
    bound = index.row_error[None, :]
    assert (err <= bound).all(), f"{(err - bound).max():.2e} over the row bound"
    assert float(bound.max()) < 0.01  # ||y_l|| ~ 2^-9: a bf16 copy's rounding, not more
    # the gathered and the contiguous reads give the same widened rows
    np.testing.assert_array_equal(index.rows32(rows[::3]).numpy(), index.rows32(rows)[::3].numpy())


@pytest.mark.parametrize("dim", [10, 3000, 9000])
@pytest.mark.parametrize("kind", ["offset", "float64", "integers"])
def test_raw_rows_in_the_tiles_stay_within_their_row_bound(dim, kind):
    """An index without vectors in memory multiplies the float32 queries with the rows as stored and
    takes r = (x32.y - m sum(x32)) / n with the index's mean and norm of each row: every pair is
    within ``raw_row_error`` (a large mean beside the spread, a float64 reference rounded to
    float32 on the way, integer pixels)."""
    g = torch.Generator().manual_seed(dim)
    base = torch.randn(40, 1, 1, dim, dtype=torch.float64, generator=g)
    images = {"offset": (base * 0.05 + 300).float().numpy(), "float64": (base + 3).numpy(),
              "integers": (base * 200 + 1000).round().clip(0, 4095).numpy().astype(np.uint16)}[kind]
    queries = (torch.randn(12, 1, 1, dim, dtype=torch.float64, generator=g) + 3).float().numpy()
    index = CorrelationIndex(images, basis_dim=4, keep_vectors=False)
    assert index.from_disk
    rows = np.arange(40)
    x, y = unit64(queries), unit64(images.astype(np.float64))
    qc = tiles.chunked(x)
    p = tiles.tile_product(qc, torch.arange(12), index.raw_rows(rows)).double()
    st = torch.from_numpy(index.stats)
    s = (p - qc.double().sum(dim=(0, 2))[:, None] * st[None, :, 0]) / st[None, :, 1]
    err = (s - x @ y.T).abs()
    bound = tiles.raw_row_error(dim, index.stats)[None, :]
    assert (err <= bound).all(), f"{(err - bound).max():.2e} over the row bound"
    if kind != "offset":  # the bound grows with the mean beside the spread: 1 + D m^2 / n^2
        assert float(bound.max()) < 1e-3


def test_an_index_on_the_cpu_keeps_float32_vectors_by_default(brainlike):
    """The pruned search (method="auto" tries it first) multiplies float32 rows: measured faster
    than a bf16 copy on CPUs with AMX too (BENCHMARKS.md), so precision="auto" keeps float32."""
    _, ref = brainlike
    assert CorrelationIndex(ref, basis_dim=8).vectors.dtype == torch.float32
    assert CorrelationIndex(ref, basis_dim=8).row_error is None


def test_the_default_basis_grows_as_the_root_of_the_reference_size():
    """d ~ 6.5 sqrt(N) in multiples of 64, 64 to 1,024 (index.default_basis_dim): a reference
    four times larger gets about twice the directions, not four times (the N / 32 kept before gave
    64 at 2,459 references, where the survivors cost more than brute force)."""
    sizes = [1, 50, 300, 1000, 2459, 6216, 8192, 24000, 80000, 10**6]
    dims = [index_module.default_basis_dim(n) for n in sizes]
    assert all(d % 64 == 0 and 64 <= d <= 1024 for d in dims)
    assert dims == sorted(dims)
    assert dims[0] == 64 and dims[-1] == 1024
    for n in (1000, 2459, 6000):  # below the cap: four times the references, about twice the basis
        assert 1.7 <= index_module.default_basis_dim(4 * n) / index_module.default_basis_dim(n) <= 2.4
    assert index_module.default_basis_dim(2459) >= 256  # the size measured in BENCHMARKS.md, item 24
    ref = slices(n_subjects=20, depth=16, size=16)  # 320 images: more than 64 directions by default
    index = CorrelationIndex(ref)
    assert index.basis.shape[1] == index_module.default_basis_dim(len(ref)) > 64


# -- every method equals float64 brute force ---------------------------------------------------
def test_a_basis_refined_over_more_rows_captures_more_of_the_reference(brainlike, monkeypatch):
    """Fitted to a sample too small for its d, the basis is refined by one step of subspace
    iteration over more rows: it holds more of the reference (its own principal directions
    nearly), strongest first, and the search stays exact."""
    q, ref = brainlike
    y = unit64(ref)  # 192 rows of 512 pixels
    evals = torch.linalg.eigvalsh(y.T @ y).flip(0)
    monkeypatch.setattr(projection, "BASIS_SAMPLE", 24)
    index = CorrelationIndex(ref, basis_dim=16)
    w = index.basis.double()
    sampled = projection.fit_basis(y[torch.from_numpy(np.sort(np.random.default_rng(0).choice(len(y), 24, replace=False)))], 16)

    def left(basis):  # what the basis leaves of the reference: the sum of its squared residuals
        return len(y) - float(((y @ basis.double()) ** 2).sum())

    assert projection.basis_delta(index.basis) < 1e-5
    least = len(y) - float(evals[:16].sum())  # what the reference's own 16 principal directions leave
    assert left(sampled) > 1.5 * least  # the sample alone places the basis badly (10.7 against 5.1)
    assert left(w) < least + 0.25 * (left(sampled) - least)  # one step takes most of the way (5.7)
    assert left(w[:, :4]) < 1.1 * (len(y) - float(evals[:4].sum()))  # a cascade's first level: the strongest
    for k in (1, 4):
        ev, ei, _ = truth(q, ref, k)
        res = index.topk(q, k=k, method="pruned", tile=8)
        np.testing.assert_array_equal(res.indices, ei)
        np.testing.assert_allclose(res.values, ev, atol=1e-12)


def test_a_refinement_whose_rows_miss_a_direction_keeps_the_basis():
    w = torch.eye(6)[:, :2].contiguous()
    rows = torch.zeros(3, 6)
    rows[:, 0] = 1.0  # nothing along the second direction
    assert torch.equal(projection.refine_basis(w, iter([rows])), w)
    rows[:, 1] = torch.tensor([0.5, -0.2, 0.1])
    refined = projection.refine_basis(w, iter([rows]))
    assert projection.basis_delta(refined) < 1e-6
    # the same plane, the stronger direction first
    assert refined[2:].abs().max() < 1e-6
    assert abs(float(refined[0, 0])) > abs(float(refined[1, 0]))


@pytest.mark.parametrize("precision", ["float32", "bf16"])
@pytest.mark.parametrize("basis", ["pca", "blocks"])
@pytest.mark.parametrize("k", [1, 4, 40])
def test_every_method_equals_float64_brute_force(brainlike, basis, k, precision, monkeypatch):
    q, ref = brainlike
    ev, ei, _ = truth(q, ref, k)
    index = CorrelationIndex(ref, basis=basis, basis_dim=32, block=4, precision=precision)
    for method in ("pruned", "brute", "auto", "auto-pruned", "auto-brute"):
        if method == "auto-pruned":  # brute force made slow: auto samples the tiles and goes on by them
            index._probe = {"pair_s": 1.0, "row_s": 0.0}
        if method == "auto-brute":  # the tiles made dear: brute force goes on from the exact seeds
            index._probe = {"pair_s": 0.0, "row_s": 0.0}
            monkeypatch.setattr(pruned, "predict_tiles", lambda *a: 1e6)
        res = index.topk(q, k=k, method=method.split("-")[0], tile=8)  # k = 40 is larger than a tile
        np.testing.assert_array_equal(res.indices, ei)
        np.testing.assert_allclose(res.values, ev, atol=1e-12)
        if method == "auto-brute" or (method == "auto-pruned" and res.stats["auto_figures"]["fraction"] <= pruned.AUTO_MAX_FRACTION):
            assert res.stats["method"] == method.split("-")[1]  # (above half the pairs auto goes brute unsampled)
    plain = index.topk(q, k=k, method="pruned", tile=8)
    if k < 40:  # the fitted basis prunes most pairs of these smooth slices
        assert plain.stats["full_fraction"] < (0.35 if basis == "pca" else 0.8)


@pytest.mark.parametrize("precision", ["float32", "bf16", "out-of-core"])
@pytest.mark.parametrize("case", ["nearly-equal", "between-clusters", "duplicates", "offset"])
def test_adversarial_references_stay_exact(case, precision):
    """``out-of-core``: no vectors in memory, the tiles multiply the rows as stored (raw_rows)."""
    rng = np.random.default_rng(7)
    if case == "offset":  # a mean 10^4 times the spread: the raw rows' bound is loose, the answer exact
        base = rng.random((40, 2, 8, 8))
        ref = (1000 + 0.1 * np.concatenate([base, base + 0.05 * rng.standard_normal(base.shape)])).astype(np.float32)
        q = (base[:10] + 0.02 * rng.standard_normal((10, 2, 8, 8))).astype(np.float32)
    elif case == "nearly-equal":
        base = rng.random((1, 2, 8, 8)).astype(np.float32)
        ref = base + 1e-4 * rng.standard_normal((120, 2, 8, 8)).astype(np.float32)
        q = base + 1e-4 * rng.standard_normal((10, 2, 8, 8)).astype(np.float32)
    elif case == "between-clusters":
        a, b = rng.random((1, 2, 8, 8)), rng.random((1, 2, 8, 8))
        ref = np.concatenate([a + 0.01 * rng.standard_normal((60, 2, 8, 8)),
                              b + 0.01 * rng.standard_normal((60, 2, 8, 8))]).astype(np.float32)
        q = ((a + b) / 2 + 1e-3 * rng.standard_normal((10, 2, 8, 8))).astype(np.float32)
    else:  # exact duplicates: ties go to the lower index
        base = rng.random((30, 2, 8, 8)).astype(np.float32)
        ref = np.concatenate([base, base, base])
        q = base[:10] + 0.01 * rng.standard_normal((10, 2, 8, 8)).astype(np.float32)
    for k in (1, 3, 25):
        ev, ei, _ = truth(q, ref, k)
        index = CorrelationIndex(ref, basis_dim=8, **({"keep_vectors": False} if precision == "out-of-core"
                                                        else {"precision": precision}))
        res = index.topk(q, k=k, method="pruned", tile=16)
        np.testing.assert_array_equal(res.indices, ei)
        np.testing.assert_allclose(res.values, ev, atol=1e-12)


def spy_exact(monkeypatch) -> list:
    """Record the pairs of every exact float64 evaluation (the pruned search's and brute force's),
    one list of (query, reference) per call."""
    calls = []
    exact = kernel.exact_pairs

    def spy(q64, reference, select, qi, ri, stats=None):
        calls.append(list(zip(qi.tolist(), ri.tolist())))
        return exact(q64, reference, select, qi, ri, stats)
    monkeypatch.setattr(pruned, "exact_pairs", spy)
    monkeypatch.setattr(kernel, "exact_pairs", spy)
    return calls


@pytest.mark.parametrize("k", [1, 4])
def test_the_seeds_are_exact_and_never_rescored_again(brainlike, monkeypatch, k):
    """The seeds are evaluated in float64 first, and the rescore evaluates only pairs beyond them:
    no pair is computed exactly twice, and every float64 evaluation is counted in ``rescored``."""
    q, ref = brainlike
    index = CorrelationIndex(ref, basis_dim=4)  # little pruning: tiles and a rescore beyond the seeds
    calls = spy_exact(monkeypatch)
    res = index.topk(q, k=k, method="pruned", tile=8)
    seeds = calls[0]
    assert len(seeds) == len(q) * (k + pruned.SEED_EXTRA) == res.stats["seed_pairs"]
    assert [len(set(r for qq, r in seeds if qq == j)) for j in range(len(q))] == [k + pruned.SEED_EXTRA] * len(q)
    every = [p for c in calls for p in c]
    assert len(every) == len(set(every)) == res.rescored and len(calls) == 2 and calls[1]
    ev, ei, _ = truth(q, ref, k)
    np.testing.assert_array_equal(res.indices, ei)
    np.testing.assert_allclose(res.values, ev, atol=1e-12)


def test_constant_images_are_not_matched_by_the_tiles(brainlike):
    q, ref = brainlike
    q, ref = q[:12].copy(), ref.copy()
    q[2], ref[5], ref[40] = 0.3, 0.0, 1.0
    with pytest.warns(UserWarning, match="constant"):
        res = CorrelationIndex(ref, basis_dim=16).topk(q, k=3, method="pruned", tile=8)
    assert res.indices[2].tolist() == [-1, -1, -1] and set(res.constant_reference) == {5, 40}
    assert not np.isin(res.indices, [5, 40]).any()


def test_constant_images_inside_a_tile_span_are_not_matched():
    """A tile whose rows mostly survive is evaluated as one contiguous span, constant references
    in it included: they must still never be matched.  Here every other reference is constant and
    the others are near-equal (nothing prunes), so the tiles' spans hold constants."""
    rng = np.random.default_rng(3)
    base = rng.random((1, 2, 8, 8)).astype(np.float32)
    ref = np.repeat(base, 256, axis=0) + 0.05 * rng.random((256, 2, 8, 8)).astype(np.float32)
    ref[1::2] = 0.5  # constant
    q = base + 0.05 * rng.random((6, 2, 8, 8)).astype(np.float32)
    for k in (2, 5):
        ev, ei, _ = truth(q, ref[::2], k)
        res = CorrelationIndex(ref, basis_dim=4).topk(q, k=k, method="pruned", tile=8)
        assert res.stats["tiles_evaluated"] > 0 and res.stats["rows_read"] > 128  # spans across constants
        assert set(res.constant_reference) == set(range(1, 256, 2))
        np.testing.assert_array_equal(res.indices, ei * 2)  # the non-constant rows, in float64's order
        np.testing.assert_allclose(res.values, ev, atol=1e-12)


def test_auto_counts_its_one_off_probe_among_the_stages(brainlike, fresh_machine_cache):
    """The first ``method="auto"`` search of an index times the brute probe (once per index, not
    in any stage of the search): its seconds are among the result's stages, and only there."""
    q, ref = brainlike
    index = CorrelationIndex(ref, basis_dim=4)
    first = index.topk(q, k=2, method="auto")
    assert first.stats["seconds"]["probe_s"] > 0
    assert first.stats["auto_figures"]["probe_s"] == pytest.approx(first.stats["seconds"]["probe_s"], abs=1e-4)
    again = index.topk(q, k=2, method="auto")
    assert "probe_s" not in again.stats["seconds"] and "probe_s" not in again.stats["auto_figures"]
    assert "probe_s" not in index.topk(q, k=2, method="pruned").stats["seconds"]
    np.testing.assert_array_equal(first.indices, again.indices)


def test_the_brute_probe_is_kept_per_machine_and_shape_of_the_work(brainlike, tmp_path, fresh_machine_cache,
                                                                   monkeypatch):
    """A new process (here: a new index) on the same machine reads the brute probe's figures from
    the cache instead of timing them again (a papermill rerun, ``workbench search --index``); rows
    from elsewhere (another precision, a store) or another size are probed afresh, and an unreadable
    cache only means probing again."""
    q, ref = brainlike
    timed = []
    real = CorrelationIndex._probe_brute
    monkeypatch.setattr(CorrelationIndex, "_probe_brute", lambda self: timed.append(self) or real(self))
    first = CorrelationIndex(ref, basis_dim=4)
    figures = first.probe()
    assert len(timed) == 1 and figures["pair_s"] > 0
    saved = json.loads((fresh_machine_cache / "search-probe.json").read_text())
    assert saved[first.probe_key()]["pair_s"] == figures["pair_s"]
    other = CorrelationIndex(ref[::-1].copy(), basis_dim=4)  # other values, the same work
    res = other.topk(q, k=2, method="auto")
    assert len(timed) == 1 and other.probe()["pair_s"] == figures["pair_s"]
    assert "probe_s" not in res.stats["seconds"] and res.stats["auto_figures"]["probe_measured"] == figures["measured"]
    ev, ei, _ = truth(q, ref[::-1], 2)
    np.testing.assert_array_equal(res.indices, ei)
    for elsewhere in (CorrelationIndex(ref, basis_dim=4, precision="bf16"), CorrelationIndex(ref[:40], basis_dim=4),
                      CorrelationIndex(write_store(tmp_path / "s", ref), basis_dim=4, keep_vectors=False)):
        assert elsewhere.probe_key() != first.probe_key()
        elsewhere.probe()
    assert len(timed) == 4
    (fresh_machine_cache / "search-probe.json").write_text("{not json")
    CorrelationIndex(ref, basis_dim=4).probe()
    assert len(timed) == 5 and json.loads((fresh_machine_cache / "search-probe.json").read_text())


def test_auto_samples_within_the_tiles_of_a_plan_of_few_tiles(brainlike, monkeypatch):
    """A small reference in memory has few, large tiles: auto's sample is every AUTO_SAMPLE_STRIDE-th
    query of each tile, not whole tiles (two of five were 40 % of the work, lost where auto then
    went brute); the rest of each tile is evaluated after, and the answer is exact either way."""
    q, ref = brainlike
    q = np.concatenate([q] * 4)  # many queries a tile
    ev, ei, _ = truth(q, ref, 2)
    index = CorrelationIndex(ref, basis_dim=4)
    plan = [tiles.Tile(j, torch.arange(j, 50 + j), np.arange(8 * j, 8 * j + 8),
                       None if j % 2 else torch.rand(50, 8) < 0.5) for j in range(3)]
    sample, rest = tiles.split_sample(plan, by_queries=True)
    assert len(sample) == len(rest) == 3
    for whole, part, other in zip(plan, sample, rest):
        assert part.queries.tolist() == whole.queries[::tiles.AUTO_SAMPLE_STRIDE].tolist()
        assert sorted(part.queries.tolist() + other.queries.tolist()) == whole.queries.tolist()
        assert part.work() + other.work() == whole.work() and np.array_equal(part.rows, whole.rows)
    assert tiles.split_sample(plan)[0] == plan[:1]  # whole tiles where the rows are read from disk
    monkeypatch.setattr(CorrelationIndex, "probe", lambda self: {"pair_s": 1.0, "row_s": 0.0})  # brute: dear
    monkeypatch.setattr(pruned, "AUTO_MAX_FRACTION", 1.0)  # sampled, however loose a basis of 4
    res = index.topk(q, k=2, tile=64)  # 192 references: three tiles
    figures = res.stats["auto_figures"]
    assert res.stats["method"] == "pruned" and figures["sample_tiles"] >= 3
    assert figures["sample_pairs"] < 0.15 * figures["fraction"] * len(q) * len(ref)
    np.testing.assert_array_equal(res.indices, ei)
    np.testing.assert_allclose(res.values, ev, atol=1e-12)


def test_auto_says_what_it_chose(brainlike, monkeypatch):
    q, ref = brainlike
    ev, ei, _ = truth(q, ref, 2)
    index = CorrelationIndex(ref, basis_dim=4)  # a small basis and tiles: tiles beyond the seeds to sample
    # the tiles' measured cost against the brute probe's figures (made slow, then free, here)
    monkeypatch.setattr(CorrelationIndex, "probe", lambda self: {"pair_s": 1.0, "row_s": 0.0})
    res = index.topk(q, k=2, tile=4)
    assert res.stats["method"] == "pruned" and res.stats["auto"].startswith("pruned")
    figures = res.stats["auto_figures"]
    assert figures["brute_s"] == len(q) * len(ref) and 0 < figures["sample_pairs"] and "known" not in figures
    assert 0 < figures["pruned_rest_s"] < figures["brute_total_s"]
    assert figures["rescore_pairs"] <= figures["brute_rescore_pairs"]  # the float32 screen's bound is wider
    assert figures["fraction"] == pytest.approx(res.stats["full_fraction"])
    assert figures["exact_pair_s"] > 0  # measured on the seeds
    plain = index.topk(q, k=2, tile=4, method="pruned")
    assert res.stats["tiles_evaluated"] > 0 and plain.stats["tiles_evaluated"] > 0  # the sampled ones counted
    np.testing.assert_array_equal(res.indices, ei)
    np.testing.assert_allclose(res.values, ev, atol=1e-12)
    assert index._tile_rates == {(len(q), 2): figures["tile_rate"]} and figures["tile_rate"] > 0  # remembered
    # a free brute screen and dear tiles: brute after the timed sample, taking the seeds' exact
    # values (no pair evaluated exactly twice) and their k-th best as its floor
    monkeypatch.setattr(CorrelationIndex, "probe", lambda self: {"pair_s": 0.0, "row_s": 0.0})
    monkeypatch.setattr(pruned, "predict_tiles", lambda *a: 1e6)
    index._tile_rates.clear()  # no earlier search to go by: a sample
    calls = spy_exact(monkeypatch)
    res = index.topk(q, k=2, tile=4)
    assert res.stats["method"] == "brute" and "timed sample of them" in res.stats["auto"]
    figures = res.stats["auto_figures"]
    assert figures["pruned_rest_s"] > figures["brute_total_s"] >= 0 and "known" not in figures
    every = [p for c in calls for p in c]
    assert len(calls) == 2 and len(every) == len(set(every))  # the seeds, then brute force's other candidates
    assert res.rescored == len(every)  # every pair evaluated in float64 counted once, the seeds too
    alone = index.topk(q, k=2, method="brute")
    np.testing.assert_array_equal(res.indices, ei)
    np.testing.assert_array_equal(res.values, alone.values)
    # the rate that sample measured is remembered: the next auto search of the same shape goes brute
    # at once (the screen is free), with no tile evaluated, taking the seeds all the same
    calls.clear()
    res = index.topk(q, k=2, tile=4)
    assert res.stats["method"] == "brute" and "no sample taken" in res.stats["auto"]
    assert "sample_pairs" not in res.stats["auto_figures"] and res.stats["auto_figures"]["tiles_at_rate_s"] > 0
    every = [p for c in calls for p in c]
    assert len(calls) == 2 and len(every) == len(set(every))
    np.testing.assert_array_equal(res.indices, ei)
    np.testing.assert_array_equal(res.values, alone.values)
    # another number of queries or another k: no rate to go by, a sample again
    monkeypatch.setattr(pruned, "AUTO_MAX_FRACTION", 1.0)
    assert "timed sample of them" in index.topk(q[:-1], k=2, tile=4).stats["auto"]
    assert "timed sample of them" in index.topk(q, k=3, tile=4).stats["auto"]
    # tiles that would evaluate more than AUTO_MAX_FRACTION of the pairs: brute without a sample
    monkeypatch.setattr(pruned, "AUTO_MAX_FRACTION", 0.0)
    res = index.topk(q, k=2, tile=4)
    assert res.stats["method"] == "brute" and "more than 0%" in res.stats["auto"]
    np.testing.assert_array_equal(res.indices, ei)


# -- the saved index: out of core, and refusing what does not match ------------------------------
def write_store(path, images):
    with StoreWriter(path, channels=["a", "b"], height=images.shape[2], width=images.shape[3]) as w:
        w.append(images, [{"subject": f"s{i // 16}", "split": "train"} for i in range(len(images))])
    return SliceStore.open(path)


def test_out_of_core_index_reads_rows_from_the_store_and_reopens(brainlike, tmp_path, monkeypatch):
    q, ref = brainlike
    store = write_store(tmp_path / "s", ref)
    ev, ei, _ = truth(q, ref, 3)
    index = CorrelationIndex(store, keep_vectors=False, basis_dim=8)  # a small basis: tiles beyond the seeds
    assert index.vectors is None and index.from_disk
    asked, read = [], []  # the rows asked for ahead, and those then got
    readers = []  # the tiles read every batch of rows into the reader's few buffers
    ask, get, init = AheadReader.ask, AheadReader.get, RawReader.__init__

    def spy_init(self, index, depth):
        init(self, index, depth)
        readers.append(self._reader)
    monkeypatch.setattr(RawReader, "__init__", spy_init)
    # the tiles' readers only (the rescore reads its candidates through another)
    monkeypatch.setattr(AheadReader, "ask", lambda self, p: (self in readers and asked.append(p), ask(self, p))[1])

    def spy_get(self, p):
        if self not in readers:
            return get(self, p)
        read.append(p)
        out = get(self, p)
        if self.direct:  # a view of one of the reader's buffers, never a fresh array
            assert np.shares_memory(out, self._current)
        return out
    monkeypatch.setattr(AheadReader, "get", spy_get)
    res = index.topk(q, k=3, method="pruned", tile=8)
    np.testing.assert_array_equal(res.indices, ei)
    np.testing.assert_allclose(res.values, ev, atol=1e-12)
    assert len(read) > 2 and asked  # each tile was asked for ahead of its read, and read once
    key = [tuple(p) for p in read]
    assert sorted(map(tuple, asked)) == sorted(key) and len(key) == len(set(key))
    assert readers and all(r._count <= r.depth + 2 for r in readers)  # a few buffers, never one per tile
    assert all(r._fd is None and r._pool is None for r in readers)  # each closed after its stage
    monkeypatch.undo()
    brute = index.topk(q, k=3, method="brute")  # streams the store
    np.testing.assert_array_equal(brute.indices, ei)
    index.save(tmp_path / "i")
    again = CorrelationIndex.open(tmp_path / "i")
    assert again.vectors is None and again.basis_name == "pca"
    res2 = again.topk(q, k=3, method="pruned", tile=8)
    np.testing.assert_array_equal(res2.indices, res.indices)
    np.testing.assert_array_equal(res2.values, res.values)


def test_rows_read_into_a_reused_buffer_are_the_rows_read_afresh(brainlike, tmp_path):
    """SliceStore.read(out=...) and the tiles' reader (CorrelationIndex.raw_reader): the same bits
    as a fresh read; read(out=...) returns a view of the buffer, refuses a wrong one, and a view
    that picks channels copies them out of it."""
    _, ref = brainlike
    store = write_store(tmp_path / "s", ref)
    pos = np.array([0, 1, 2, 7, 30, 31, 40])
    buf = store.read_buffer(10)
    got = store.read(pos, out=buf)
    np.testing.assert_array_equal(got, store.read(pos))
    assert np.shares_memory(got, buf) and got.shape == (len(pos), *store.image_shape)
    with pytest.raises(ValueError, match="at least 7 images"):
        store.read(pos, out=store.read_buffer(3))
    with pytest.raises(ValueError, match="float32"):
        store.read(pos, out=np.empty((10, int(np.prod(store.image_shape))), np.float64))
    two = store.with_channels(store.channels[:2][::-1])
    np.testing.assert_array_equal(two.read(pos, out=buf), two.read(pos))
    index = CorrelationIndex(store, keep_vectors=False, basis_dim=16)
    batches = (pos, pos[:3], np.arange(3, 80))  # the last needs more than the first buffer holds
    with index.raw_reader(2) as reader:
        for rows, out in zip(batches, reader.stream(batches, 3)):
            np.testing.assert_array_equal(out.numpy(), store.read(rows).reshape(len(rows), -1))
            np.testing.assert_array_equal(index.raw_rows(rows).numpy(), out.numpy())


def test_a_store_asks_the_kernel_for_each_run_of_rows_it_will_read(brainlike, tmp_path, monkeypatch):
    """prefetch: one posix_fadvise(WILLNEED) per run of consecutive store rows (a view's positions
    mapped to its rows), nothing read, and the rows read afterwards unchanged."""
    from workbench.data import store as store_module

    if not hasattr(store_module.os, "posix_fadvise"):
        pytest.skip("no posix_fadvise on this platform")
    _, ref = brainlike
    store = write_store(tmp_path / "s", ref)
    view = store.where(subject=["s1", "s3"])  # store rows 16-31 and 48-63
    calls = []
    monkeypatch.setattr(store_module.os, "posix_fadvise", lambda fd, off, n, advice: calls.append((off, n, advice)))
    view.prefetch(np.array([0, 1, 2, 5, 16, 17]))  # store rows 16-18, 21, 48-49
    row = ref[0].nbytes
    first = store._images.offset
    assert calls == [(first + 16 * row, 3 * row, store_module.os.POSIX_FADV_WILLNEED),
                     (first + 21 * row, row, store_module.os.POSIX_FADV_WILLNEED),
                     (first + 48 * row, 2 * row, store_module.os.POSIX_FADV_WILLNEED)]
    view.prefetch(np.array([], dtype=np.int64))
    assert len(calls) == 3
    np.testing.assert_array_equal(view.read(np.array([0, 16])), ref[[16, 48]])


def test_an_edited_store_is_refused(brainlike, tmp_path):
    _, ref = brainlike
    store = write_store(tmp_path / "s", ref)
    CorrelationIndex(store, basis_dim=16).save(tmp_path / "i")
    images = np.load(tmp_path / "s" / "images.npy", mmap_mode="r+")
    images[:] = images[::-1]  # the same store id and shape, other images
    images.flush()
    del images
    with pytest.raises(WorkbenchError, match="no longer match the index"):
        CorrelationIndex.open(tmp_path / "i")


def test_another_selection_than_the_index_was_built_with_is_refused(brainlike, tmp_path):
    q, ref = brainlike
    store = write_store(tmp_path / "s", ref)
    index = CorrelationIndex(store, channels=["a"], basis_dim=16)
    with pytest.raises(WorkbenchError, match="built on channels"):
        index.topk(store, k=1, channels=["b"])
    index.topk(store, k=1, channels=["a"])  # the same selection is fine
    with pytest.raises(WorkbenchError, match="another mask"):
        index.topk(store, k=1, mask=np.ones((16, 16), bool))
    with pytest.raises(WorkbenchError, match="basis must be"):
        CorrelationIndex(store, basis="wavelets")
    with pytest.raises(WorkbenchError, match="tile"):
        index.topk(store, k=1, tile=0)


def test_a_damaged_saved_index_is_refused(brainlike, tmp_path):
    _, ref = brainlike
    store = write_store(tmp_path / "s", ref)
    CorrelationIndex(store, basis_dim=16).save(tmp_path / "i")
    np.save(tmp_path / "i" / "codes.npy", np.zeros((3, 16), np.float32))
    with pytest.raises(WorkbenchError, match="do not match the index"):
        CorrelationIndex.open(tmp_path / "i")
    (tmp_path / "i" / "basis.npy").unlink()
    with pytest.raises(WorkbenchError, match="not a complete CorrelationIndex"):
        CorrelationIndex.open(tmp_path / "i")


def test_gamma_and_slack_are_small_at_brats_sizes():
    # the code slack at d = 256 for 5 x 256 x 256 images: what the bound adds to every pair
    eta = math.sqrt(256) * (projection.gamma(projection.CODE_CHUNK) + projection.U32)
    assert eta < 3e-4
    assert tiles.tier_error_bound(5 * 256 * 256) < 1e-4


@pytest.mark.parametrize("keep_vectors", [True, False])
def test_the_cascade_is_exact_and_saved(brainlike, tmp_path, monkeypatch, keep_vectors):
    # a basis of 32 with a first level of 8 codes: every pair bounded from 8, survivors from 32
    monkeypatch.setattr(index_module, "LEVEL1", 8)
    q, ref = brainlike
    store = write_store(tmp_path / "s", ref)
    index = CorrelationIndex(store, basis_dim=32, keep_vectors=keep_vectors)
    assert index.level1 == 8
    single = CorrelationIndex(store, basis_dim=8)
    for k in (1, 4):
        ev, ei, _ = truth(q, ref, k)
        res = index.topk(q, k=k, method="pruned", tile=8)
        np.testing.assert_array_equal(res.indices, ei)
        np.testing.assert_allclose(res.values, ev, atol=1e-12)
        assert res.stats["level1"] == 8
        # the second level prunes more than the first level alone
        assert res.stats["full_fraction"] < single.topk(q, k=k, method="pruned", tile=8).stats["full_fraction"]
    index.save(tmp_path / "i")
    again = CorrelationIndex.open(tmp_path / "i")
    assert again.level1 == 8
    np.testing.assert_array_equal(again.topk(q, k=4, method="pruned", tile=8).indices, truth(q, ref, 4)[1])


def test_the_cascade_bounds_pair_by_pair_keep_every_pair_the_dense_bounds_keep(brainlike, monkeypatch):
    """The second level of the cascade bounds each surviving pair alone (a sampled product of its
    codes, ``tiles.cascade_pairs``; CUDA keeps a dense product per tile): it keeps every pair whose
    true r reaches the query's threshold, and the same pairs as the dense bounds up to the rounding
    of the three terms (1e-6)."""
    monkeypatch.setattr(index_module, "LEVEL1", 8)
    monkeypatch.setattr(tiles, "BOUND_ROWS", 50)  # several blocks of references
    q, ref = brainlike
    index = CorrelationIndex(ref, basis_dim=32)
    assert index.level1 == 8
    q64 = unit64(q)
    cq, rho_q, slack_q, _ = projection.codes(q64, index.basis, index.delta, prefix=8)
    _, _, r = truth(q, ref, 1)
    tau = torch.from_numpy(np.sort(r, axis=1)[:, -6])  # each query's 6th best r
    tile = 8
    width = -(-len(ref) // tile) * tile
    rng = np.random.default_rng(3)
    surv = torch.zeros((len(q), width), dtype=torch.bool)
    surv[:, :len(ref)] = torch.from_numpy(rng.random((len(q), len(ref))) < 0.7)  # first-level survivors
    qi, ri = tiles.cascade_pairs(surv, tau, index, (cq, rho_q, slack_q))
    got = np.zeros((len(q), len(ref)), dtype=bool)
    got[qi, ri] = True
    assert len(qi) == got.sum()  # each pair once
    s = surv[:, :len(ref)].numpy()
    assert not (got & ~s).any()
    assert (got | ~s | (r < tau.numpy()[:, None])).all()  # every survivor reaching tau is kept
    dense = projection.upper_bounds(cq, rho_q, slack_q, index.codes, index.rho, index.slack).numpy()
    aq, ar = np.nonzero(s)
    np.testing.assert_allclose(tiles.pair_bounds((cq, rho_q, slack_q), index, torch.from_numpy(aq), torch.from_numpy(ar)),
                               dense[aq, ar], rtol=0, atol=1e-6)
    margin = np.abs(dense - tau.numpy()[:, None]) > 1e-6
    want = s & (dense >= tau.numpy()[:, None])
    np.testing.assert_array_equal(got[margin], want[margin])
    assert 0 < got.sum() < s.sum()  # the second level prunes
    # the tiles of those pairs: each tile evaluates its pairs (sampled tiles those alone)
    plan = tiles.tile_plan(surv, tau, index, (cq, rho_q, slack_q), tile, sparse=True)
    assert [t.index for t in plan] == sorted(set((ri // tile).tolist()))
    evaluated = np.zeros_like(got)
    for t in plan:
        tq, lr = t.pair_index("cpu")
        evaluated[tq.numpy(), t.rows[lr.numpy()]] = True
        if t.pairs is not None:
            np.testing.assert_array_equal(t.pairs.numpy(), got[np.ix_(t.queries.numpy(), t.rows)])
    assert (evaluated | ~got).all()
    assert any(t.pairs is not None for t in plan)
    # CUDA's way (dense level-2 products per tile, dense tiles) evaluates those pairs as well
    dense_plan = tiles.tile_plan(surv, tau, index, (cq, rho_q, slack_q), tile, sparse=False)
    assert all(t.pairs is None for t in dense_plan)
    evaluated[:] = False
    for t in dense_plan:
        evaluated[np.ix_(t.queries.numpy(), t.rows)] = True
    assert (evaluated | ~got | ~margin).all()


@pytest.mark.parametrize("dim", [3000, 2048])
def test_tile_products_through_a_reused_gather_buffer_equal_fresh_gathers(dim):
    """The tiles gather their queries into one buffer, grown when a tile needs more and reused by
    smaller ones: every product equals the one with a fresh gather, bit for bit (a short last
    slice of pixels included)."""
    rng = np.random.default_rng(5)
    qc = tiles.chunked(torch.from_numpy(rng.standard_normal((20, dim))))
    r32 = torch.from_numpy(rng.standard_normal((7, dim)).astype(np.float32))
    buffer = [None]
    for qs in ([0, 3, 5], list(range(20)), [2], [19, 4]):
        qs = torch.tensor(qs)
        np.testing.assert_array_equal(tiles.tile_product(qc, qs, r32, buffer).numpy(),
                                      tiles.tile_product(qc, qs, r32).numpy())
    assert buffer[0].numel() == qc.shape[0] * 20 * tiles.TIER_CHUNK  # grown once, to the largest tile


@pytest.mark.parametrize("dim", [10, 1024, 3000, 4096])
def test_pair_products_equal_the_tile_products_within_the_tier_bound(dim):
    """A sampled tile's products of its pairs alone (``pair_product``): within the float32 tier's
    bound of the exact products and of the dense tile's, for pairs in any pattern (a query with
    several rows, rows with several queries, a short last slice of pixels)."""
    rng = np.random.default_rng(dim)
    x = torch.nn.functional.normalize(torch.from_numpy(rng.standard_normal((20, dim)) + 2), dim=1)
    y = torch.nn.functional.normalize(torch.from_numpy(rng.standard_normal((9, dim)) + 2), dim=1)
    qc = tiles.chunked(x)
    qi = torch.tensor([2, 2, 3, 7, 7, 7, 19])
    lr = torch.tensor([0, 5, 5, 1, 2, 8, 3])
    got = tiles.pair_product(qc, qi, lr, y.float()).double()
    exact = (x[qi] * y[lr]).sum(dim=1)
    assert (got - exact).abs().max() <= tiles.tier_error_bound(dim)
    dense = tiles.tile_product(qc, torch.arange(20), y.float()).double()[qi, lr]
    assert (got - dense).abs().max() <= 2 * tiles.tier_error_bound(dim)
    if dim % tiles.TIER_CHUNK == 0:  # the pattern laid out by reference rows (rows in memory): any pair order
        shuffle = torch.from_numpy(rng.permutation(len(qi)))
        by_rows = tiles.pair_product_by_rows(qc, qi[shuffle], lr[shuffle], y.float()).double()
        assert (by_rows - exact[shuffle]).abs().max() <= tiles.tier_error_bound(dim)
        assert (by_rows - got[shuffle]).abs().max() <= 2 * tiles.tier_error_bound(dim)


@pytest.mark.parametrize("sparse", [0.0, 1.1])
@pytest.mark.parametrize("keep_vectors", [True, False])
def test_sampled_and_dense_tiles_give_the_same_exact_answer(brainlike, tmp_path, monkeypatch, sparse, keep_vectors):
    """Every tile dense (SPARSE_DENSITY 0) or every tile sampled (above 1), in memory and from a
    store, method auto forced through its samples too: the float64 brute-force top k."""
    monkeypatch.setattr(tiles, "SPARSE_DENSITY", sparse)
    q, ref = brainlike
    ev, ei, _ = truth(q, ref, 4)
    source = ref if keep_vectors else write_store(tmp_path / "s", ref)
    index = CorrelationIndex(source, basis_dim=16, keep_vectors=keep_vectors)
    res = index.topk(q, k=4, method="pruned", tile=8)
    np.testing.assert_array_equal(res.indices, ei)
    np.testing.assert_allclose(res.values, ev, atol=1e-12)
    assert (res.stats["tiles_sampled"] > 0) == (sparse > 1)  # the path under test ran, or did not
    index._probe = {"pair_s": 1.0, "row_s": 0.0}  # brute force made slow
    res = index.topk(q, k=4, method="auto", tile=8)
    assert res.stats["method"] == "pruned"
    np.testing.assert_array_equal(res.indices, ei)
    np.testing.assert_allclose(res.values, ev, atol=1e-12)


def test_tiles_hold_more_rows_of_smaller_images_within_their_bytes(brainlike):
    """Rows per tile: 512 for the benchmark's 4 x 64 x 64 and 4 x 128 x 128 slices, 64 for BraTS
    slices of 5 x 256 x 256 (a tile's rows within TILE_BYTES), a power of two in between; the
    default search uses it."""
    assert tiles.tile_rows(4 * 64 * 64) == tiles.tile_rows(4 * 128 * 128) == tiles.TILE_MAX == 512
    assert tiles.tile_rows(5 * 256 * 256) == tiles.TILE == 64
    assert tiles.tile_rows(1_000_000) == 64  # never fewer than TILE, however large the image
    assert tiles.tile_rows(200_000) == 128 and 128 * 4 * 200_000 <= tiles.TILE_BYTES
    q, ref = brainlike
    res = CorrelationIndex(ref, basis_dim=16).topk(q, k=2, method="pruned")
    assert res.stats["tile"] == tiles.tile_rows(ref[0].size)
    np.testing.assert_array_equal(res.indices, truth(q, ref, 2)[1])


@pytest.mark.parametrize("size", [32, 24])  # 2 x 32 x 32: whole slices of 1,024 pixels; 2 x 24 x 24: a short last one
@pytest.mark.parametrize("keep_vectors", [True, False])
def test_sampled_tiles_of_images_longer_than_a_slice_are_exact(tmp_path, monkeypatch, size, keep_vectors):
    """The sampled product over (slice, query) x (row, slice) patterns, in memory (a stage's tiles
    in one product from the index's rows, where the pixels fill whole slices) and from a store
    (raw rows), with a short last slice or none: the float64 brute-force top k."""
    monkeypatch.setattr(tiles, "SPARSE_DENSITY", 1.1)  # every tile sampled
    ref = slices(n_subjects=6, depth=12, size=size, seed=3)
    rng = np.random.default_rng(2)
    q = np.concatenate([ref[::7] + 0.02 * rng.standard_normal(ref[::7].shape).astype(np.float32),
                        slices(n_subjects=1, depth=8, size=size, seed=9)])
    assert ref[0].size > tiles.TIER_CHUNK
    source = ref if keep_vectors else write_store(tmp_path / "s", ref)
    index = CorrelationIndex(source, basis_dim=4, keep_vectors=keep_vectors)  # little pruning: tiles to sample
    for k in (1, 5):
        ev, ei, _ = truth(q, ref, k)
        res = index.topk(q, k=k, method="pruned", tile=16)
        assert res.stats["tiles_sampled"] > 0
        np.testing.assert_array_equal(res.indices, ei)
        np.testing.assert_allclose(res.values, ev, atol=1e-12)
    # auto through its sample after the seeds (brute force made slow): in memory the sampled tiles'
    # rest is predicted at the rate of all their products so far
    index._probe = {"pair_s": 1.0, "row_s": 0.0}
    res = index.topk(q, k=5, method="auto", tile=16)
    figures = res.stats["auto_figures"]
    assert res.stats["method"] == "pruned" and 0 <= figures["sample_s"] <= figures["tiles_s"] < 60
    np.testing.assert_array_equal(res.indices, truth(q, ref, 5)[1])


@pytest.mark.parametrize("n", [64 * 24, 64 * 24 + 37, 100])
def test_the_seeds_two_stage_top_m_is_torch_topk(n):
    """tiles.top_m (the maxima of runs of columns, then the best runs' columns) gives torch.topk's
    values, and columns holding them, past the last whole run too, with -inf (constant) rows and
    columns and ties."""
    gen = torch.Generator().manual_seed(n)
    est = torch.randn(7, n, generator=gen)
    est[2] = -math.inf  # a constant query
    est[:, 5] = -math.inf  # a constant reference
    est[4, :] = 0.5  # all tied
    est[5, -3:] = 9.0  # the best past the last whole run
    est[6, ::2] = est[6, 0]  # every other column tied with the first
    for m in (1, 3, 6):
        v, i = tiles.top_m(est, m)
        want, _ = torch.topk(est, m, dim=1)
        torch.testing.assert_close(v, want, rtol=0, atol=0)
        torch.testing.assert_close(torch.gather(est, 1, i), want, rtol=0, atol=0)
        assert all(len(set(row.tolist())) == m for row in i)  # distinct references


def test_mask_pairs_are_torch_nonzero_in_the_same_order():
    """kernel.mask_pairs (numpy's flatnonzero on the CPU) gives torch.nonzero's pairs, row-major,
    for a whole mask, a block of columns cut out of a wider one, and empty and full masks."""
    gen = torch.Generator().manual_seed(0)
    wide = torch.rand(37, 300, generator=gen) < 0.1
    for mask in (wide, wide[:, 64:191], torch.zeros(5, 7, dtype=torch.bool), torch.ones(3, 4, dtype=torch.bool)):
        got, want = kernel.mask_pairs(mask), torch.nonzero(mask, as_tuple=True)
        for a, b in zip(got, want):
            torch.testing.assert_close(a, b, rtol=0, atol=0)


@pytest.mark.parametrize("level1", [None, 8])
@pytest.mark.parametrize("per_group", [1, 3])
def test_queries_in_groups_give_the_same_search(brainlike, monkeypatch, level1, per_group):
    """Above HOLD_BOUNDS_BYTES the bounds, seeds and survivors go a group of queries at a time (the
    group's bounds held from its seeds to its survivors): the same pairs survive, the same answer
    comes back, the constant query in a group of its own or beside others."""
    if level1:
        monkeypatch.setattr(index_module, "LEVEL1", level1)
    monkeypatch.setattr(tiles, "BOUND_ROWS", 50)  # several blocks
    q, ref = brainlike
    q = q.copy()
    q[3] = 0.25  # a constant query: -inf bounds in every block
    index = CorrelationIndex(ref, basis_dim=32)
    with pytest.warns(UserWarning, match="constant"):
        held = index.topk(q, k=3, method="pruned", tile=8)
    monkeypatch.setattr(pruned, "HOLD_BOUNDS_BYTES", 4 * len(ref) * per_group)
    with pytest.warns(UserWarning, match="constant"):
        again = index.topk(q, k=3, method="pruned", tile=8)
    np.testing.assert_array_equal(again.indices, held.indices)
    np.testing.assert_array_equal(again.values, held.values)
    assert again.stats["screened_pairs"] == held.stats["screened_pairs"]
    live = np.arange(len(q)) != 3
    ev, ei, _ = truth(q[live], ref, 3)
    np.testing.assert_array_equal(again.indices[live], ei)


@pytest.mark.parametrize("setting", ["medium", "high"])
def test_a_caller_allowing_lower_precision_float32_products_still_gets_the_exact_answer(setting):
    """torch.set_float32_matmul_precision("medium") lets the CPU (oneDNN with AMX) multiply float32
    in bf16, "high" lets CUDA use TF32: the search's bounds assume IEEE float32 products, so it sets
    them for its own work and restores the caller's setting afterwards."""
    rng = np.random.default_rng(11)
    base = rng.random((1, 2, 32, 32)).astype(np.float32)
    ref = base + 2e-3 * rng.standard_normal((300, 2, 32, 32)).astype(np.float32)  # r within ~1e-5 of each other
    q = base + 2e-3 * rng.standard_normal((12, 2, 32, 32)).astype(np.float32)
    ev, ei, _ = truth(q, ref, 5)
    before = torch.get_float32_matmul_precision()
    torch.set_float32_matmul_precision(setting)
    try:
        for precision in ("float32", "bf16"):
            index = CorrelationIndex(ref, basis_dim=8, precision=precision)
            for method in ("pruned", "brute"):
                res = index.topk(q, k=5, method=method, tile=16)
                np.testing.assert_array_equal(res.indices, ei)
                np.testing.assert_allclose(res.values, ev, atol=1e-12)
        res = topk_correlation(q, ref, k=5)
        np.testing.assert_array_equal(res.indices, ei)
        assert torch.get_float32_matmul_precision() == setting
    finally:
        torch.set_float32_matmul_precision(before)


@pytest.mark.parametrize("kind", ["float32", "bf16", "out-of-core"])
def test_the_brute_probe_predicts_a_positive_time_once_per_index(brainlike, tmp_path, kind, fresh_machine_cache):
    """method="auto" compares the tiles' measured cost with the brute screen's, timed once per
    index on its own rows as the brute search reads them (memory, or the store)."""
    _, ref = brainlike
    if kind == "out-of-core":
        index = CorrelationIndex(write_store(tmp_path / "s", ref), basis_dim=8, keep_vectors=False)
    else:
        index = CorrelationIndex(ref, basis_dim=8, precision=kind)
    one = index.brute_seconds(10)
    probe = index.probe()
    assert probe["pair_s"] > 0 and (probe["row_s"] > 0) == (kind == "out-of-core")
    assert index.brute_seconds(20) == pytest.approx(one + 10 * len(ref) * probe["pair_s"])
    assert index.probe() is probe  # memoised: measured once per index


@pytest.mark.parametrize("method", ["pruned", "auto"])
def test_only_constant_queries_get_no_match_from_the_tiles(method):
    """Nothing to evaluate at all (every query constant): no seed, no tile, no error."""
    rng = np.random.default_rng(0)
    ref = rng.random((100, 1, 8, 8)).astype(np.float32)
    q = np.full((3, 1, 8, 8), 0.5, np.float32)
    with pytest.warns(UserWarning, match="constant"):
        res = CorrelationIndex(ref, basis_dim=4).topk(q, k=2, method=method)
    assert res.indices.tolist() == [[-1, -1]] * 3 and res.constant_queries.all()


def test_a_saved_bf16_index_reopens_and_its_tiles_stay_exact(brainlike, tmp_path):
    """A bf16 copy is saved with its split norms: reopened, its tiles widen the memory-mapped bf16
    rows with the same per-row bound and the answer is float64's."""
    q, ref = brainlike
    store = write_store(tmp_path / "s", ref)
    index = CorrelationIndex(store, basis_dim=16, precision="bf16")
    index.save(tmp_path / "i")
    again = CorrelationIndex.open(tmp_path / "i")
    assert again.dtype == torch.bfloat16 and not again.from_disk
    np.testing.assert_array_equal(again.row_error.numpy(), index.row_error.numpy())
    for k in (1, 4):
        ev, ei, _ = truth(q, ref, k)
        res = again.topk(q, k=k, method="pruned", tile=8)
        np.testing.assert_array_equal(res.indices, ei)
        np.testing.assert_allclose(res.values, ev, atol=1e-12)
        assert res.stats["bound"] == "per row"


def test_the_tiles_left_are_predicted_from_the_sampled_tiles_times():
    """auto fits each sampled tile's seconds as a fixed cost plus a cost per pair."""
    def plan(sizes):  # tiles of (queries, rows)
        return [tiles.Tile(j, torch.arange(a), np.arange(b)) for j, (a, b) in enumerate(sizes)]

    sample = plan([(2, 10), (5, 40), (1, 4), (8, 64)])
    times = [1e-3 + 2e-6 * a * b for a, b in [(2, 10), (5, 40), (1, 4), (8, 64)]]
    rest = plan([(3, 30), (10, 64)])
    want = 2 * 1e-3 + 2e-6 * (90 + 640)
    assert tiles.predict_tiles(sample, times, rest) == pytest.approx(want)
    assert tiles.predict_tiles(sample, times, []) == 0.0
    # two tiles only: the mean cost per pair
    two = tiles.predict_tiles(sample[:2], times[:2], rest)
    assert two == pytest.approx(730 * sum(times[:2]) / 220)
    # a fit with a negative part falls back to one non-negative cost
    assert tiles.predict_tiles(sample, [4e-3, 1e-3, 5e-3, 1e-3], rest) >= 0
    # a sampled tile's pair counts SPARSE_PAIR_COST dense pairs: 12 of 3 x 30 wanted
    mask = torch.zeros((3, 30), dtype=torch.bool)
    mask[0, :12] = True
    sparse = [tiles.Tile(0, torch.arange(3), np.arange(30), mask)]
    assert tiles.predict_tiles(sample, times, sparse) == pytest.approx(1e-3 + 2e-6 * 12 * tiles.SPARSE_PAIR_COST)
