"""benchmark/compare.py: runs, table, JSON, resume (finished runs skipped) and failures, on tiny synthetic runs."""
import importlib.util
import json
import os

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
spec = importlib.util.spec_from_file_location("compare", os.path.join(REPO, "benchmark", "compare.py"))
compare = importlib.util.module_from_spec(spec)
spec.loader.exec_module(compare)

TINY = ["--seeds", "1", "2", "--epochs", "1", "--jobs", "2", "--script-args", "--synth-dim 16 --batch-size 256"]


def test_mean_std():
    assert compare.mean_std([]) == "–"
    assert compare.mean_std([50.0]) == "50.00"                          # one seed: no "± 0.00"
    assert compare.mean_std([1.0, 2.0, 3.0]) == "2.00 ± 1.00"          # sample std: sqrt(((1)^2+0+(1)^2)/2) = 1


def test_compare_runs_writes_tables_and_resumes(tmp_path, capsys):
    out = str(tmp_path / "cmp")
    rc = compare.main(["--methods", "source-only-pooling", "dg-tsn", "--out", out, *TINY])
    assert rc == 0
    res = json.load(open(os.path.join(out, "results.json")))
    assert res["synthetic"] is True and res["failed"] == [] and res["seeds"] == [1, 2]
    for name in ("source-only-pooling", "dg-tsn"):
        row = res["methods"][name]
        assert row["seeds"] == [1, 2] and len(row["last"]) == 2
        for key in ("last", "source_selected", "oracle"):
            assert all(0 <= v <= 100 for v in row[key])
        # the oracle is the best target epoch, so never below the last epoch
        assert all(o >= l for o, l in zip(row["oracle"], row["last"]))
        metrics = json.load(open(os.path.join(out, name, "s1", "metrics.json")))
        assert abs(100 * metrics["final"]["last"]["top1"] - row["last"][0]) < 1e-9
    md = open(os.path.join(out, "results.md")).read()
    assert "SYNTHETIC" in md and "| source-only-pooling |" in md and "70.28 (TA3N T3)" in md
    assert res["methods"]["dg-tsn"]["baseline"] is None and res["threads"] == 1
    capsys.readouterr()
    # a second call finds every run finished and re-runs nothing
    assert compare.main(["--methods", "source-only-pooling", "dg-tsn", "--out", out, *TINY]) == 0
    printed = capsys.readouterr().out
    assert printed.count("skipped (done)") == 4 and "done in" not in printed


def test_compare_reports_failed_runs(tmp_path):
    out = str(tmp_path / "bad")
    rc = compare.main(["--methods", "source-only-pooling", "--out", out, "--source", "no-such-domain", *TINY])
    assert rc == 1
    res = json.load(open(os.path.join(out, "results.json")))
    assert len(res["failed"]) == 2 and "error:" in res["failed"][0]
    assert "Failed runs" in open(os.path.join(out, "results.md")).read()


def test_gain_is_called_a_gain_only_beyond_the_combined_spread():
    base = {"source_selected": [60.0, 62.0, 64.0]}                     # mean 62, sd 2
    row = lambda v: {"source_selected": v, "baseline": "so"}
    assert compare.gain_cell(row([70.0, 71.0, 72.0]), base) == "+9.00 vs so (gain)"          # 9 > 2 + 1
    assert compare.gain_cell(row([63.0, 65.0, 67.0]), base) == "+3.00 vs so (within spread)"  # 3 <= 2 + 2
    assert compare.gain_cell(row([50.0, 51.0, 52.0]), base) == "-11.00 vs so (loss)"
    assert compare.gain_cell(row([70.0]), base) == "–"                                       # one seed: no spread


def test_subset_keeps_other_methods_and_readme_block_is_rendered(tmp_path):
    out = str(tmp_path / "cmp")
    assert compare.main(["--methods", "source-only-pooling", "--out", out, *TINY]) == 0
    assert compare.main(["--methods", "dann-pooling", "--out", out, *TINY]) == 0
    res = json.load(open(os.path.join(out, "results.json")))
    assert set(res["methods"]) == {"source-only-pooling", "dann-pooling"}       # the first run stays in the table
    assert res["methods"]["dann-pooling"]["baseline"] == "source-only-pooling"
    readme = tmp_path / "README.md"
    readme.write_text(f"intro\n{compare.README_START}\nold table\n{compare.README_END}\noutro\n")
    compare.write_readme_table(os.path.join(out, "results.json"), str(readme))
    text = readme.read_text()
    assert text.startswith("intro\n") and text.endswith("outro\n") and "old table" not in text
    assert "| dann-pooling | " in text and "vs source-only-pooling" in text


def test_readme_table_is_generated_from_the_committed_results():
    """The README's results table is exactly what `python -m benchmark.compare --readme` renders from the
    committed benchmark/results/synth2-a_synth2-b/results.json: no number in it is typed by hand."""
    results = os.path.join(REPO, "benchmark", "results", "synth2-a_synth2-b", "results.json")
    table = "\n".join(compare.render_table(json.load(open(results))))
    readme = open(os.path.join(REPO, "README.md")).read()
    block = readme.split(compare.README_START, 1)[1].split(compare.README_END, 1)[0]
    assert block.strip("\n") == table
