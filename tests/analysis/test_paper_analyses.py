"""The paper's analyses (issue 12), reproduced on the published TSV2 table against independent computations.

Every expected value here is computed in the test from the CSV with pandas, numpy, scipy and
scikit-learn, following the authors' notebook and R script, not by calling the package.
"""
from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from scipy.cluster.hierarchy import cophenet, linkage
from scipy.spatial.distance import squareform
from scipy.stats import fisher_exact, spearmanr, ttest_ind
from sklearn.ensemble import IsolationForest

from agg2exp_lightning.analysis import analyze_cohort, parse_explanation_table, read_explanation_table
from agg2exp_lightning.analysis.bias import bias_tests
from agg2exp_lightning.analysis.graph import class_clustering, dependency_edges
from agg2exp_lightning.analysis.regions import apply_empty_regions, merge_table_regions, resolve_merges

PUBLISHED = ["background", "aorta", "lung_upper_lobe_left", "lung_lower_lobe_left", "lung_upper_lobe_right", "lung_middle_lobe_right",
             "lung_lower_lobe_right", "trachea", "heart", "pulmonary_vein", "thyroid_gland", "ribs", "vertebraes",
             "autochthon_left", "autochthon_right", "sternum", "costal_cartilages"]


def _ours(name: str) -> str:
    return "vertebrae" if name == "vertebraes" else name


@pytest.fixture(scope="module")
def raw(published_table) -> pd.DataFrame:
    return pd.read_csv(published_table)


@pytest.fixture(scope="module")
def paper(published_table):
    return analyze_cohort(read_explanation_table(published_table), protocol="paper")


def _long_means(raw: pd.DataFrame) -> pd.DataFrame:
    """The R script's df_long_aggregated: mean (na.rm) of every mass column, background left out."""
    rows = []
    for col in raw.columns:
        if col.endswith("_mass"):
            to, frm = col[: -len("_mass")].split("_explanation_in_")
            rows.append((frm, to, raw[col].mean(skipna=True)))
    df = pd.DataFrame(rows, columns=["from", "to", "weight"])
    return df[(df["from"] != "background") & (df["to"] != "background")]


def test_global_importance_is_the_column_mean(raw, paper):
    summary = paper.summary()["global_roi_importance"]
    for a in PUBLISHED:
        for b in PUBLISHED:
            expected = raw[f"{a}_explanation_in_{b}_mass"].mean()
            assert summary[_ours(a)][_ours(b)] == pytest.approx(expected, rel=1e-12, abs=1e-15)


@pytest.mark.parametrize(("rule", "limit"), [("cumulative", 0.35), ("top_k", 5)])
def test_dependency_graph_edges_follow_the_published_rule(raw, paper, rule, limit):
    df = _long_means(raw)
    expected = set()
    for to, group in df.groupby("to", sort=False):
        g = group.sort_values("weight", ascending=False, kind="stable")
        if rule == "cumulative":
            kept = g[g["weight"].cumsum() <= limit]
        else:
            kept = g[g["weight"] >= g["weight"].iloc[limit - 1]]
        expected |= {(_ours(f), _ours(t)): w for f, t, w in kept[["from", "to", "weight"]].itertuples(index=False)}.items()
    expected = dict(expected)
    t = paper.table
    edges = dependency_edges(paper.importance, t.classes, t.regions, rule=rule, cumulative_share=0.35, top_k=5)
    got = {(r, c): s for r, c, s in edges[["region", "class", "share"]].itertuples(index=False)}
    assert set(got) == set(expected)
    np.testing.assert_allclose([got[k] for k in expected], list(expected.values()), rtol=1e-12)
    top = max(expected.values())
    np.testing.assert_allclose(edges["width"], 2 * (edges["share"] + 0.02) / (top + 0.02))
    if rule == "cumulative":  # the paper protocol's graph in summary.json
        stored = paper.summary()["dependency_graph"]
        assert stored["rule"] == "cumulative" and len(stored["edges"]) == len(expected)


def test_anomaly_scores_and_spearman_match_isolation_forests_fitted_here(raw, paper):
    decision = {}
    for a in PUBLISHED:
        x = raw[[f"{a}_explanation_in_{b}_mass" for b in PUBLISHED]].to_numpy()
        decision[a] = IsolationForest(random_state=123).fit(x).decision_function(x)
        i = paper.table.classes.index(_ours(a))
        np.testing.assert_allclose(paper.anomaly.scores[:, i], -decision[a], rtol=1e-12)
        # the notebook's spearmanr(dice, decision_function): our score is its negative, so is rho
        res = spearmanr(raw[f"{a}_dice"], decision[a])
        row = paper.correlation.loc[_ours(a)]
        assert row["rho"] == pytest.approx(-res.statistic, abs=1e-12) and row["p"] == pytest.approx(res.pvalue, rel=1e-9)
    mean_decision = np.mean([decision[a] for a in PUBLISHED], axis=0)
    mean_dice = raw[[f"{a}_dice" for a in PUBLISHED]].mean(axis=1)
    res = spearmanr(mean_dice, mean_decision)
    stored = paper.summary()["mean_anomaly_vs_mean_dice"]
    assert stored["rho"] == pytest.approx(-res.statistic, abs=1e-12) and stored["p"] == pytest.approx(res.pvalue, rel=1e-9)
    assert stored["n"] == 32


def test_clustering_is_r_hclust_average_on_the_lower_triangle(raw, paper):
    df = _long_means(raw)
    m = df.pivot(index="to", columns="from", values="weight").sort_index().sort_index(axis=1)  # acast(to ~ from)
    m = np.sqrt(m.fillna(0.0))
    d = (m.to_numpy().max() - m.to_numpy())
    n = len(m)
    condensed = np.array([d[i, j] for j in range(n) for i in range(j + 1, n)])  # as.dist: lower triangle, column-major
    z = linkage(condensed, method="average")
    clustering = paper.clustering
    assert clustering.rule == "paper" and list(clustering.labels) == [_ours(x) for x in m.index]
    np.testing.assert_allclose(clustering.linkage[:, 2], z[:, 2], rtol=1e-12)
    np.testing.assert_array_equal(clustering.linkage[:, :2], z[:, :2])
    assert clustering.cophenetic_correlation == pytest.approx(cophenet(z, condensed)[0], rel=1e-12)
    # the symmetric rule: mean of both directions
    sym = class_clustering(paper.importance, paper.table.classes, paper.table.regions, rule="symmetric")
    np.testing.assert_allclose(squareform(sym.distance), squareform((d + d.T) / 2, checks=False), rtol=1e-12)


def test_merged_regions_sum_the_member_columns(raw, published_table):
    table = read_explanation_table(published_table)
    merged = merge_table_regions(table, resolve_merges(["lung", "autochthon"], table.regions))
    lobes = ["lung_upper_lobe_left", "lung_lower_lobe_left", "lung_upper_lobe_right", "lung_middle_lobe_right", "lung_lower_lobe_right"]
    expected = raw[[f"heart_explanation_in_{b}_mass" for b in lobes]].sum(axis=1).to_numpy()
    i, j = merged.classes.index("heart"), merged.regions.index("lung")
    np.testing.assert_allclose(merged.mass[:, i, j], expected, rtol=1e-12)
    assert merged.regions[:3] == ("background", "aorta", "lung") and "autochthon" in merged.regions
    np.testing.assert_allclose(np.nansum(merged.mass, axis=-1), np.nansum(table.mass, axis=-1), rtol=1e-12)
    analysis = analyze_cohort(table, merges={"lung": lobes})
    assert analysis.summary()["merged_regions"] == {"lung": lobes} and "lung" in analysis.summary()["regions"]


def test_a_merge_naming_an_unknown_region_names_it_and_the_nearest(published_table):
    table = read_explanation_table(published_table)
    with pytest.raises(ValueError, match="lung_lowr_lobe_left.*did you mean 'lung_lower_lobe_left'"):
        resolve_merges(["lungs=lung_upper_lobe_left,lung_lowr_lobe_left"], table.regions)
    with pytest.raises(ValueError, match="'lungs'.*did you mean 'lung'"):
        resolve_merges(["lungs"], table.regions)
    with pytest.raises(ValueError, match="'aorta' is in 'x' and 'y'"):
        merge_table_regions(table, {"x": ["aorta", "heart"], "y": ["aorta"]})


def test_empty_region_convention_zero_counts_absent_regions_in_the_mean(make_frame):
    frame = make_frame(12, seed=1)
    frame.loc[0, "aorta_explanation_in_heart_mass"] = np.nan  # heart absent from scan 0
    table = parse_explanation_table(frame)
    i, j = table.classes.index("aorta"), table.regions.index("heart")
    col = frame["aorta_explanation_in_heart_mass"]
    corrected = analyze_cohort(table)
    paper = analyze_cohort(table, protocol="paper")
    assert corrected.importance[i, j] == pytest.approx(col[1:].mean())
    assert paper.importance[i, j] == pytest.approx(col.fillna(0).mean())
    assert apply_empty_regions(np.full((1, 1, 2), np.nan), "zero").tolist() == [[[np.nan, np.nan]]] or np.isnan(
        apply_empty_regions(np.full((1, 1, 2), np.nan), "zero")).all()


def test_t_test_beside_mann_whitney_and_proportions_beside_fisher(make_frame):
    meta = pd.DataFrame({"age": [30, 35, 41, 52, 60, 61, 70, 72, 75, 80], "sex": list("FFMFMMFMMM")})
    flags = np.array([False, False, False, False, False, True, True, True, True, False])
    rows = bias_tests(meta, {"any": flags}).tests.set_index("column")
    t = ttest_ind(meta["age"][flags], meta["age"][~flags])
    assert rows.loc["age", "test"] == "mannwhitneyu"
    assert rows.loc["age", "t_statistic"] == pytest.approx(t.statistic) and rows.loc["age", "t_p"] == pytest.approx(t.pvalue)
    table = [[int((meta["sex"][flags] == s).sum()) for s in "FM"], [int((meta["sex"][~flags] == s).sum()) for s in "FM"]]
    assert rows.loc["sex", "p"] == pytest.approx(fisher_exact(table).pvalue)
    assert rows.loc["sex", "proportions"] == "outliers: F 25%, M 75%; inliers: F 50%, M 50%"


def test_clustering_keeps_regions_that_are_not_classes_as_leaves_as_the_r_script_does():
    rng = np.random.default_rng(4)
    classes, regions = ["aorta", "heart", "trachea"], ["background", "aorta", "heart", "trachea", "effusion"]
    importance = rng.dirichlet(np.ones(5), size=3)
    # the R script: long (from region, to class, weight sqrt(mean share)), no background, plus a self row
    # for the pathology at max(weight); acast(to ~ from), NA -> 0, as.dist of max - M (lower triangle)
    long = pd.DataFrame([(b, a, np.sqrt(importance[i, j])) for i, a in enumerate(classes) for j, b in enumerate(regions)
                         if b != "background"], columns=["from", "to", "weight"])
    long = pd.concat([long, pd.DataFrame({"from": ["effusion"], "to": ["effusion"], "weight": [long.weight.max()]})])
    m = long.pivot(index="to", columns="from", values="weight").sort_index().sort_index(axis=1).fillna(0.0)
    d = m.to_numpy().max() - m.to_numpy()
    n = len(m)
    condensed = np.array([d[i, j] for j in range(n) for i in range(j + 1, n)])
    z = linkage(condensed, method="average")
    got = class_clustering(importance, classes, regions)
    assert list(got.labels) == list(m.index) == ["aorta", "effusion", "heart", "trachea"]
    np.testing.assert_allclose(got.linkage, z, rtol=1e-12)
