"""The report of an eval run: pooled averages over levels, and its tables (the plots are drawn in
test_kinetix_sweep.py, from a real sweep)."""

from rtchunk.kinetix import report, results


def test_report_pools_levels_and_averages_only_shared_configurations(tmp_path):
    def row(level, method, d, s, solved, n=100, profile="fixed"):
        r = {c: "" for c in results.COLUMNS}
        r.update(level=level, method=method, d=d, s=s, profile=profile, num_envs=n, solved=solved, policy="ckpt")
        return r

    rows = [row("a", "rtc", 1, 1, 90), row("b", "rtc", 1, 1, 50, n=50), row("a", "rtc", 2, 2, 80),
            row("a", "naive", 1, 1, 40), row("b", "naive", 1, 1, 30, n=50)]
    for r in rows:
        results.append_rows(tmp_path / "results.csv", [r], results.COLUMNS)
    rates = report.fixed_rates(results.read_rows(tmp_path / "results.csv", results.COLUMNS))
    assert rates[(report.AVERAGE, "rtc", 1, 1)] == report.Rate(140, 150)
    assert rates[(report.AVERAGE, "naive", 1, 1)] == report.Rate(70, 150)
    assert (report.AVERAGE, "rtc", 2, 2) not in rates  # level b lacks it
    path = report.write_report(tmp_path)
    text = path.read_text()
    assert "randomly initialised" not in text
    average = text.split("## Average over levels")[1].split("##")[0]
    assert f"| naive | {report.Rate(70, 150)} |" in average and f"| rtc | {report.Rate(140, 150)} |" in average


def test_the_legend_order_covers_exactly_the_registered_methods():
    from rtchunk.methods import METHOD_NAMES

    assert sorted(report.METHOD_ORDER) == sorted(METHOD_NAMES)
