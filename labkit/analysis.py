"""``labkit.analyze(pilot)``: the statistics of one pilot, its verdict, and the `--json` contract.

Flow: the assignment (intent-to-treat units) -> per-arm sufficient statistics of every metric, computed
in the engine -> the pure statistics of ``labkit.stats`` -> multiplicity -> the decision. No MLflow, no
papermill here; ``Analysis.to_dict()`` is exactly what ``labkit analyze --json`` prints and what the
notebook writes as results.json.

Families (DESIGN.md): the primary metric over the treatment arms is one family (Holm when there are
several arms); the secondary metrics x arms form another, corrected by the pilot's ``correction``;
guardrails are not corrected. Methods by metric type: proportions — unpooled z-test, or Barnard's exact
test with its inverted intervals for small counts; means — Welch, or CUPED when the metric has a covariate or
``cuped: true``; ratios — delta method; quantiles — seeded bootstrap (seed derived from the pilot id
and metric name, so a re-run gives the same numbers). In sequential mode each interval and p-value is
made always-valid with the asymptotic confidence sequence tuned to the cap (``max_size``). Quantile
statistics of an arm smaller than the lab's ``privacy.min_cell_size`` are suppressed: a median of a
handful of customers is a person's value.

Imported assignments: a proportion with a ``covariate`` is a 0/1 mean and gets CUPED like any mean (a
field that is accepted is applied); with ``cohort.assignment.strata`` proportions and means are
post-stratified over the tool's blocks (``labkit.stats.poststrat``). The assignment's data warnings
(customers failing ``where``, NULL arms skipped, the cap) join ``warnings`` with the analysis' own
(differential missingness, blocks left out, a changed cohort), so the JSON, the notebook and the run
description say everything the terminal said.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import math
import os
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

from labkit import __version__
from labkit.decision import ArmResult, GuardrailCheck, Recommendation, Verdict, decide, recommend
from labkit.spec import Pilot

METRIC_FIELDS = (
    "metric", "role", "type", "arm", "control_arm", "n_control", "n_treatment", "mean_control",
    "mean_treatment", "effect", "ci_low", "ci_high", "lift", "lift_ci_low", "lift_ci_high", "p_value",
    "p_value_adjusted", "method", "variance_reduction",
)  # fmt: skip


def _finite(x):
    """Floats for JSON: None for anything not finite (never NaN in the contract)."""
    if x is None:
        return None
    if isinstance(x, bool):
        return x
    if isinstance(x, int):
        return x
    x = float(x)
    return x if math.isfinite(x) else None


@dataclass(frozen=True)
class Analysis:
    """The result of analysing one pilot; ``to_dict()`` is the `labkit analyze --json` contract."""

    pilot: str
    decision: str
    reason: str
    verdict: Verdict
    srm: dict
    metric_rows: list[dict]
    plan: dict
    roi: dict | None
    warnings: list[str] = field(default_factory=list)
    data_quality: dict = field(default_factory=dict)
    meta: dict = field(default_factory=dict)
    # the decision weighed with the ROI (labkit.decision.recommend); None only for an Analysis built by hand
    advice: Recommendation | None = None

    @property
    def recommendation(self) -> str | None:
        """scale | rework | extend | stop | fix (DESIGN.md): what to do next, the economics included."""
        return self.advice.recommendation if self.advice else None

    @property
    def recommendation_text(self) -> str:
        """The recommendation as a notebook shows it: ``**rework** (arm 'x'). <one sentence>``."""
        if self.advice is None:
            return ""
        arm = f" (arm '{self.advice.arm}')" if self.advice.arm else ""
        return f"**{self.advice.recommendation}**{arm}. {self.advice.reason}"

    @property
    def metrics(self):
        """One row per (metric, treatment arm), as a pandas DataFrame."""
        import pandas as pd

        return pd.DataFrame(self.metric_rows)

    def to_dict(self) -> dict:
        return {
            "pilot": self.pilot,
            "decision": self.decision,
            "reason": self.reason,
            "decision_code": self.verdict.code,
            "srm": self.srm,
            "metrics": [dict(r) for r in self.metric_rows],
            "plan": self.plan,
            "roi": self.roi,
            "recommendation": self.recommendation,
            "recommendation_arm": self.advice.arm if self.advice else None,
            "recommendation_reason": self.advice.reason if self.advice else None,
            "warnings": list(self.warnings),
            "data_quality": self.data_quality,
            "meta": self.meta,
        }

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2, allow_nan=False)

    def save(self, directory: str | os.PathLike, *, run_token: str | None = None) -> Path:
        """Write results.json into ``directory`` atomically (temp file, fsync, rename).

        ``run_token`` (set by `labkit run`) is written into ``meta.run_token``: the runner counts a
        notebook as complete only when results.json carries the token of its own run."""
        folder = Path(directory)
        folder.mkdir(parents=True, exist_ok=True)
        target = folder / "results.json"
        data = self.to_dict()
        if run_token:
            data["meta"] = {**data["meta"], "run_token": run_token}
        write_atomic(target, json.dumps(data, indent=2, allow_nan=False) + "\n")
        return target

    def _repr_html_(self) -> str:
        import html

        rows = "".join(
            "<tr>"
            + "".join(
                f"<td>{html.escape(_fmt(r.get(k)))}</td>"
                for k in (
                    "metric",
                    "role",
                    "arm",
                    "effect",
                    "ci_low",
                    "ci_high",
                    "lift",
                    "p_value_adjusted",
                    "method",
                )
            )
            + "</tr>"
            for r in self.metric_rows
        )
        head = "".join(
            f"<th>{k}</th>"
            for k in ("metric", "role", "arm", "effect", "ci low", "ci high", "lift", "p (adj.)", "method")
        )
        return (
            f"<p><b>{html.escape(self.pilot)}</b>: <b>{html.escape(self.decision)}</b> — "
            f"{html.escape(self.reason)}</p>"
            + (
                f"<p>Recommendation: <b>{html.escape(self.advice.recommendation)}</b> — "
                f"{html.escape(self.advice.reason)}</p>"
                if self.advice
                else ""
            )
            + f"<table><tr>{head}</tr>{rows}</table>"
        )


def _fmt(v) -> str:
    if v is None:
        return "–"
    if isinstance(v, float):
        return f"{v:.4g}"
    return str(v)


def usual_file_mode() -> int:
    """The mode any new file gets here: 0666 less the umask (0644 under the usual 022), labkit's file-mode
    policy for everything it writes under results/ (README, Guarantees). The umask is read from /proc: the
    only portable way, ``os.umask``, sets it for a moment, and a file another thread creates then misses it."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("Umask:"):
                return 0o666 & ~int(line.split()[1], 8)
    except (OSError, ValueError):  # pragma: no cover - not Linux
        pass
    mask = os.umask(0o022)  # pragma: no cover
    os.umask(mask)  # pragma: no cover
    return 0o666 & ~mask  # pragma: no cover


def write_atomic(target: Path, text: str) -> None:
    """Write ``text`` to ``target`` through a temporary file and a rename, with the usual file mode (not
    mkstemp's 0600, which would stick to the file)."""
    fd, tmp = tempfile.mkstemp(dir=target.parent, prefix=f".{target.name}.", suffix=".tmp")
    try:
        os.fchmod(fd, usual_file_mode())
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            fh.write(text)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, target)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def _seed(pilot_id: str, metric: str) -> int:
    return int.from_bytes(hashlib.sha256(f"{pilot_id}\x1f{metric}".encode()).digest()[:4], "big")


def estimate(pilot: Pilot, data, arm: str, *, alpha: float):
    """One (metric, treatment arm) comparison with the method the metric type calls for."""
    from labkit import stats

    c, t = data.arms[pilot.control], data.arms[arm]
    if getattr(data, "strata", None) is not None and data.kind in ("proportion", "mean"):
        from labkit.stats.poststrat import post_stratified

        est, _ = post_stratified(data.strata.get(pilot.control, {}), data.strata.get(arm, {}), alpha=alpha)
    elif data.kind == "proportion" and data.covariate is not None:
        # a 0/1 outcome is a mean: regression adjustment (CUPED) applies to it as to any mean
        est = stats.cuped(c, t, alpha=alpha)
    elif data.kind == "proportion":
        est = stats.compare_proportions(c, t, alpha=alpha)
    elif data.kind == "ratio":
        est = stats.delta_ratio(c, t, alpha=alpha)
    elif data.kind == "quantile":
        metric = pilot.metric(data.metric)
        est = stats.bootstrap_quantile(
            data.values[pilot.control],
            data.values[arm],
            q=metric.quantile,
            alpha=alpha,
            seed=_seed(pilot.id, data.metric),
            n_boot=pilot.settings.bootstrap_samples,
        )
    elif data.covariate is not None:
        est = stats.cuped(c, t, alpha=alpha)
    else:
        est = stats.welch(c, t, alpha=alpha)
    if pilot.settings.sequential and est.reason is None:
        est = stats.always_valid(est, n=c.n + t.n, n_tuning=pilot.cap or c.n + t.n, alpha=alpha)
    return est


def _suppress(est, data, pilot: Pilot, arm: str):
    """Quantiles over fewer customers than the lab's minimum cell size are a person's value: withhold them."""
    from dataclasses import replace

    if data.kind != "quantile":
        return est
    floor = pilot.lab.spec.privacy.min_cell_size
    if min(len(data.values[pilot.control]), len(data.values[arm])) >= floor:
        return est
    return replace(
        est,
        mean_control=None,
        mean_treatment=None,
        effect=None,
        se=None,
        ci_low=None,
        ci_high=None,
        lift=None,
        lift_ci_low=None,
        lift_ci_high=None,
        lift_se=None,
        var_mean_control=None,
        var_mean_treatment=None,
        p_value=None,
        reason="suppressed_small_cell",
    )


def _as_of(value) -> dt.datetime | None:
    """A look date (ISO text, date or datetime) as a naive UTC datetime; events from then on are unseen."""
    if value is None or value == "":
        return None
    if isinstance(value, str):
        try:
            value = dt.datetime.fromisoformat(value)
        except ValueError:
            from labkit.errors import LabkitError

            raise LabkitError(f"as_of: '{value}' is not an ISO date (YYYY-MM-DD)") from None
    if isinstance(value, dt.datetime):
        return value.astimezone(dt.UTC).replace(tzinfo=None) if value.tzinfo else value
    return dt.datetime(value.year, value.month, value.day)


def analyze(pilot: Pilot, *, engine=None, as_of=None) -> Analysis:
    """Analyse a pilot from its assignment and the lab's data (DESIGN.md, Statistics).

    ``as_of`` is the date of a look (ISO text or date): events from then on are left out of every event
    window, as if the analysis ran that day; per-customer tables are read as they are."""
    from concurrent.futures import ThreadPoolExecutor

    from labkit.data.aggregate import aggregate_pilot, units_table
    from labkit.data.sources import DigestCache, Engine

    look = _as_of(as_of)
    own = engine is None
    engine = engine or Engine.for_lab(pilot.lab)
    try:
        units = units_table(engine, pilot)
        from labkit.assignment import load_assignment

        assignment = load_assignment(pilot)
        # A lab of files is hashed while the engine aggregates (hashlib and DuckDB both release the GIL);
        # a database table's digest is a query on the engine's one connection, so it waits its turn.
        files = all(pilot.lab.source(n).format in ("csv", "parquet") for n in sources_used(pilot))
        cache = DigestCache.load(pilot.lab)
        with ThreadPoolExecutor(max_workers=1, thread_name_prefix="labkit-digest") as pool:
            job = pool.submit(_data_digest, engine, pilot, assignment.path, cache) if files else None
            data = aggregate_pilot(engine, pilot, units, as_of=look)
            digest = job.result() if job else _data_digest(engine, pilot, assignment.path, cache)
        from labkit.planning import make_plan

        baseline = data[pilot.primary.name].arms.get(pilot.control)
        plan = make_plan(pilot, baseline, "control arm") if baseline is not None else None
        result = build_analysis(pilot, data, assignment_meta=assignment.meta, plan=plan, data_digest=digest)
        if look is not None:
            result.meta["as_of"] = look.isoformat()
        cache.save()
        changed = assignment.changes(pilot)
        if changed:  # `assign` refuses to redraw silently; the analysis says which cohort it analyses
            result.warnings.append(
                f"the cohort changed after the assignment was drawn ({'; '.join(changed)}); this analyses the "
                f"assignment as drawn — `labkit assign {pilot.id} --force` archives it and draws anew"
            )
        return result
    finally:
        if own:
            engine.close()


def binned_distribution(pilot: Pilot, metric: str, *, bins: int = 20, engine=None):
    """Share of each arm's customers per bin of a quantile metric's values (log-spaced bins for positive
    data), as a DataFrame: arm, bin_low, bin_high, count, share. Bins with fewer customers than the lab's
    ``privacy.min_cell_size`` are suppressed (count and share set to 0, ``suppressed`` true), so a figure
    never shows an individual customer's value."""
    import numpy as np
    import pandas as pd

    from labkit.data.aggregate import aggregate_metric, units_table
    from labkit.data.sources import Engine

    m = pilot.metric(metric)
    if m.type != "quantile":
        from labkit.errors import LabkitError

        raise LabkitError(
            f"metric '{metric}' is a {m.type} metric; distributions are drawn for quantile metrics"
        )
    own = engine is None
    engine = engine or Engine.for_lab(pilot.lab)
    try:
        data = aggregate_metric(engine, pilot, m, units_table(engine, pilot))
    finally:
        if own:
            engine.close()
    pooled = np.concatenate([v for v in data.values.values() if len(v)]) if data.values else np.array([])
    if pooled.size == 0:
        return pd.DataFrame(columns=["arm", "bin_low", "bin_high", "count", "share", "suppressed"])
    # The outer edges are rounded outwards to two significant digits, so they show no customer's exact
    # minimum or maximum (zero stays zero: the floor of a non-negative metric is nobody's value).
    lo, hi = _round_out(float(pooled.min()), down=True), _round_out(float(pooled.max()), down=False)
    if lo > 0 and hi > lo:
        edges = np.geomspace(lo, hi, bins + 1)
    else:
        edges = np.linspace(lo, hi if hi > lo else lo + 1, bins + 1)
    floor = pilot.lab.spec.privacy.min_cell_size
    rows = []
    for arm, values in data.values.items():
        counts, _ = np.histogram(values, bins=edges)
        total = max(len(values), 1)
        for low, high, n in zip(edges[:-1], edges[1:], counts):
            hidden = 0 < n < floor
            rows.append(
                {
                    "arm": arm,
                    "bin_low": float(low),
                    "bin_high": float(high),
                    "count": 0 if hidden else int(n),
                    "share": 0.0 if hidden else n / total,
                    "suppressed": bool(hidden),
                }
            )
    return pd.DataFrame(rows)


def _round_out(x: float, *, down: bool) -> float:
    """x rounded to two significant digits, strictly below (``down``) or above it; 0 stays 0."""
    if x == 0 or not math.isfinite(x):
        return x
    step = 10.0 ** (math.floor(math.log10(abs(x))) - 1)
    edge = (math.floor(x / step) if down else math.ceil(x / step)) * step
    if edge == x:
        edge += -step if down else step
    return float(edge)


def _data_digest(engine, pilot: Pilot, assignment_path: Path, cache=None) -> str:
    from labkit.data.sources import file_digest

    names = sorted(sources_used(pilot))
    h = hashlib.sha256()
    for name in names:
        h.update(f"{name}={engine.digest(name, cache)}\n".encode())
    assignment = cache.digest(assignment_path) if cache is not None else file_digest(assignment_path)
    h.update(f"assignment={assignment}\n".encode())
    return h.hexdigest()


def sources_used(pilot: Pilot) -> set[str]:
    s = pilot.spec
    names = {s.cohort.source}
    if s.cohort.assignment:
        names.add(s.cohort.assignment.source)
    for m in s.metrics:
        for ref in (m, m.numerator, m.denominator):
            if ref is not None and ref.source:
                names.add(ref.source)
    return names


def build_analysis(
    pilot: Pilot, data: dict, *, assignment_meta: dict, plan, data_digest: str | None = None
) -> Analysis:
    """Everything after aggregation: pure given the per-arm statistics (tests drive it directly)."""
    from labkit import stats

    s = pilot.settings
    control = pilot.control
    primary_name = pilot.primary.name
    guard_names = {g.metric for g in pilot.spec.guardrails}
    counts = {arm: int(assignment_meta.get("counts", {}).get(arm, 0)) for arm in pilot.arms}
    primary_data = data[primary_name]
    if any(primary_data.assigned.get(arm) is not None for arm in pilot.arms):
        counts = {arm: int(primary_data.assigned.get(arm, 0)) for arm in pilot.arms}
    srm = stats.srm_test(counts, pilot.arms)
    warnings: list[str] = list(plan.warnings) if plan else []
    # the assignment's own data warnings (customers failing `where`, NULL arms skipped, the cap) travel
    # with every analysis of it: the JSON, the notebook and the run description say what the terminal said
    warnings += [str(w) for w in assignment_meta.get("warnings", [])]

    rows: list[dict] = []
    estimates: dict[tuple[str, str], object] = {}
    tost: dict[str, object] = {}
    for m in pilot.spec.metrics:
        md = data[m.name]
        role = (
            "primary" if m.name == primary_name else ("guardrail" if m.name in guard_names else "secondary")
        )
        for arm in pilot.treatments:
            est = _suppress(estimate(pilot, md, arm, alpha=s.alpha), md, pilot, arm)
            estimates[(m.name, arm)] = est
            if role == "primary":
                tost[arm] = estimate(pilot, md, arm, alpha=min(2 * s.alpha, 0.99))
            row = {k: None for k in METRIC_FIELDS}
            row.update(est.to_dict())
            row.update(
                metric=m.name,
                role=role,
                type=m.type,
                arm=arm,
                control_arm=control,
                missing_control=int(md.missing.get(control, 0)),
                missing_treatment=int(md.missing.get(arm, 0)),
                assigned_control=int(md.assigned.get(control, 0)),
                assigned_treatment=int(md.assigned.get(arm, 0)),
                missing_policy=m.missing_policy,
            )
            row["covariate"] = md.covariate
            rows.append(row)
            _flag_dropped_strata(md, pilot, arm, warnings)
            if est.reason == "suppressed_small_cell":  # a withheld number is said, not just missing
                warnings.append(
                    f"metric '{m.name}', arm '{arm}': fewer than {pilot.lab.spec.privacy.min_cell_size} "
                    "customers in an arm, so the quantile is withheld (privacy.min_cell_size)"
                )
        _flag_missingness(md, pilot, warnings)

    # multiplicity: primary over arms (Holm), secondaries by the pilot's correction, guardrails raw
    def family(select, method):
        idx = [i for i, r in enumerate(rows) if select(r) and r["p_value"] is not None]
        adjusted = stats.adjust([rows[i]["p_value"] for i in idx], method) if idx else []
        for i, p in zip(idx, adjusted):
            rows[i]["p_value_adjusted"] = p

    family(lambda r: r["role"] == "primary", "holm")
    family(lambda r: r["role"] == "secondary", s.correction)
    family(lambda r: r["role"] == "guardrail", "none")
    _adjusted_intervals(pilot, data, rows, s.alpha)

    bayes_by_arm = {}
    if s.engine == "bayesian":
        for r in rows:
            # an unbounded (None) Fieller lift interval does not stop the Bayesian model: it needs lift_se only
            if r["lift"] is None or r.get("lift_se") is None:
                continue
            direction = pilot.spec.hypothesis.direction if r["role"] == "primary" else "increase"
            # the likelihood's se is the estimate's delta-method lift_se (labkit.stats.bayes), not the
            # interval's half-width / z: Welch intervals use t, sequential ones the wider CS multiplier
            lift_se = r["lift_se"]
            b = stats.bayes_lift(
                r["lift"],
                lift_se,
                prior_mean=s.prior_mean,
                prior_sd=s.prior_sd,
                alpha=s.alpha,
                direction=direction,
            )
            r.update(
                posterior_lift=b.post_mean,
                posterior_lift_sd=b.post_sd,
                credible_low=b.ci_low,
                credible_high=b.ci_high,
                chance_to_beat=b.chance_to_beat,
                expected_loss=b.expected_loss,
            )
            if r["role"] == "primary":
                b2 = stats.bayes_lift(
                    r["lift"],
                    lift_se,
                    prior_mean=s.prior_mean,
                    prior_sd=s.prior_sd,
                    alpha=min(2 * s.alpha, 0.99),
                    direction=direction,
                )
                bayes_by_arm[r["arm"]] = (b, b2)

    verdict = _verdict(pilot, rows, tost, bayes_by_arm, srm, assignment_meta, plan, data)
    roi = _roi(pilot, rows)
    sign = 1.0 if pilot.spec.hypothesis.direction == "increase" else -1.0
    gains = {
        r["arm"]: (None if r["effect"] is None else sign * r["effect"])
        for r in rows
        if r["role"] == "primary"
    }
    advice = recommend(verdict, roi=roi, gains=gains, metric=primary_name, currency=pilot.lab.spec.currency)
    rows = [{k: _finite(v) if isinstance(v, float) else v for k, v in r.items()} for r in rows]
    srm_dict = {
        "p_value": _finite(srm.p_value),
        "ok": bool(srm.ok),
        "counts": dict(srm.counts),
        "expected": {k: _finite(v) for k, v in srm.expected.items()},
        "method": srm.method,
    }
    quality = {
        name: {
            "assigned": dict(md.assigned),
            "missing": dict(md.missing),
            "missing_policy": pilot.metric(name).missing_policy,
            "covariate": md.covariate,
        }
        for name, md in data.items()
    }
    meta = {
        "labkit_version": __version__,
        "analysed_at": dt.datetime.now(dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
        "spec_sha256": pilot.spec_sha256,
        "prereg_sha256": pilot.prereg_sha256,
        "data_digest": data_digest,
        "alpha": s.alpha,
        "engine": s.engine,
        "sequential": s.sequential,
        "correction": s.correction,
        "function": pilot.spec.function,
        "channel": pilot.spec.channel,
        "stage": pilot.spec.stage,
        "primary_metric": primary_name,
        "direction": pilot.spec.hypothesis.direction,
        "exposed": int(sum(counts.values())),
        "cap": pilot.cap,
    }
    if assignment_meta.get("cap_exceeded") and not any("the cap is a promise" in w for w in warnings):
        warnings.append("more customers are in the imported assignment than the pilot's cap allows")
    plan_dict = plan.to_dict() if plan else {"required_per_arm": None, "mde_at_cap": None, "powered": None}
    return Analysis(
        pilot=pilot.id,
        decision=verdict.decision,
        reason=verdict.reason,
        verdict=verdict,
        srm=srm_dict,
        metric_rows=rows,
        plan=plan_dict,
        roi=roi,
        advice=advice,
        warnings=warnings,
        data_quality=quality,
        meta=meta,
    )


def _flag_dropped_strata(md, pilot: Pilot, arm: str, warnings: list[str]) -> None:
    """Blocks the post-stratified estimate could not use (an arm with fewer than two customers) are said."""
    if getattr(md, "strata", None) is None or md.kind not in ("proportion", "mean"):
        return
    from labkit.stats.poststrat import post_stratified

    _, dropped = post_stratified(md.strata.get(pilot.control, {}), md.strata.get(arm, {}))
    if dropped:
        warnings.append(
            f"metric '{md.metric}', arm '{arm}': {dropped} of the imported blocks have fewer than two "
            f"customers in '{pilot.control}' or '{arm}' and are left out of the post-stratified estimate"
        )


ADJUSTED_FIELDS = ("ci_low_adjusted", "ci_high_adjusted", "lift_ci_low_adjusted", "lift_ci_high_adjusted")


def _adjusted_intervals(pilot: Pilot, data: dict, rows: list[dict], alpha: float) -> None:
    """Intervals at the level that matches each row's multiplicity-adjusted p-value (``*_adjusted`` fields).

    For a hypothesis with raw p and adjusted p_adj (Holm or Benjamini–Hochberg), the interval at level
    1 − alpha·p/p_adj excludes 0 exactly when p < alpha·p/p_adj, i.e. when p_adj < alpha: the adjusted
    interval and the adjusted p-value agree, as ``ci_low``/``ci_high`` (level 1 − alpha, unadjusted) agree
    with the raw p-value (for Holm and BH alike: the level is read off the adjusted p-value, not a
    simultaneous-coverage claim for BH, which controls the false discovery rate). Where p_adj = p
    (guardrails, one-member families) or p = 0 the adjusted interval is the unadjusted one; where there is no
    p-value it is None. The estimate is recomputed at that level by the same method (bootstraps with the
    same seed, so the same replicates)."""
    for r in rows:
        p, p_adj = r.get("p_value"), r.get("p_value_adjusted")
        r.update(dict.fromkeys(ADJUSTED_FIELDS))
        if p is None or p_adj is None:
            continue
        if p_adj <= p or p == 0:
            level = alpha
            est = None
        else:
            level = alpha * p / p_adj
            md = data[r["metric"]]
            est = _suppress(estimate(pilot, md, r["arm"], alpha=level), md, pilot, r["arm"])
        src = est.to_dict() if est is not None else r
        r.update(
            ci_low_adjusted=src["ci_low"],
            ci_high_adjusted=src["ci_high"],
            lift_ci_low_adjusted=src["lift_ci_low"],
            lift_ci_high_adjusted=src["lift_ci_high"],
        )


def _flag_missingness(md, pilot: Pilot, warnings: list[str]) -> None:
    """Missingness that differs between arms biases intent-to-treat: flag it (two-proportion z, p < 0.01)."""
    from labkit.stats import ArmMoments, compare_proportions

    c_n, c_miss = md.assigned.get(pilot.control, 0), md.missing.get(pilot.control, 0)
    for arm in pilot.treatments:
        t_n, t_miss = md.assigned.get(arm, 0), md.missing.get(arm, 0)
        if not (c_miss or t_miss) or min(c_n, t_n) < 2:
            continue
        est = compare_proportions(
            ArmMoments(c_n, c_miss, c_miss), ArmMoments(t_n, t_miss, t_miss), alpha=0.01
        )
        if est.p_value is not None and est.p_value < 0.01:
            warnings.append(
                f"metric '{md.metric}': missing data differs between '{pilot.control}' "
                f"({c_miss}/{c_n}) and '{arm}' ({t_miss}/{t_n}); results may be biased"
            )


def _verdict(pilot: Pilot, rows, tost, bayes_by_arm, srm, assignment_meta, plan, data) -> Verdict:
    s = pilot.settings
    hyp = pilot.spec.hypothesis
    relative = hyp.mde.relative is not None
    mde = hyp.mde.relative if relative else hyp.mde.absolute
    primary = []
    for r in rows:
        if r["role"] != "primary":
            continue
        low = high = ctb = None
        if s.engine == "bayesian" and r["arm"] in bayes_by_arm:
            _, b2 = bayes_by_arm[r["arm"]]
            ctb = bayes_by_arm[r["arm"]][0].chance_to_beat
            if relative:
                low, high = b2.ci_low, b2.ci_high
        t = tost.get(r["arm"])
        if t is not None and low is None:
            low, high = (t.lift_ci_low, t.lift_ci_high) if relative else (t.ci_low, t.ci_high)
        reason = r.get("reason")
        if reason == "zero_control_mean" and not relative and r["p_value"] is not None:
            reason = None  # only the lift is undefined; an absolute MDE is judged on the effect itself
        primary.append(
            ArmResult(
                arm=r["arm"],
                effect=r["effect"],
                lift=r["lift"],
                p_value=r["p_value_adjusted"],
                reason=reason,
                tost_low=low,
                tost_high=high,
                chance_to_beat=ctb,
            )
        )
    guards = []
    for g in pilot.spec.guardrails:
        rel = g.max_harm.relative is not None
        arms = [
            ArmResult(
                arm=r["arm"], effect=r["effect"], lift=r["lift"], p_value=r["p_value"], reason=r.get("reason")
            )
            for r in rows
            if r["metric"] == g.metric
        ]
        guards.append(
            GuardrailCheck(
                g.metric, g.direction, g.max_harm.relative if rel else g.max_harm.absolute, rel, arms
            )
        )
    smallest = min((data[pilot.primary.name].arms[a].n for a in pilot.arms), default=None)
    return decide(
        metric=pilot.primary.name,
        direction=hyp.direction,
        mde=mde,
        mde_relative=relative,
        alpha=s.alpha,
        primary=primary,
        guardrails=guards,
        srm_p=srm.p_value,
        cap_exceeded=bool(assignment_meta.get("cap_exceeded")),
        required_per_arm=plan.required_per_arm if plan else None,
        smallest_arm=smallest,
        bayesian=s.engine == "bayesian",
    )


def _roi(pilot: Pilot, rows: list[dict]) -> dict | None:
    """Value = effect per customer × value_per_unit × customers in the treatment arms, signed so that a move
    in the hypothesis' direction is worth money; its interval from the effect's interval; ROI = (value − cost)/cost.
    With several treatment arms the values add up (bounds add too: a conservative interval)."""
    budget = pilot.spec.budget
    if budget is None:
        return None
    sign = 1.0 if pilot.spec.hypothesis.direction == "increase" else -1.0
    value = low = high = 0.0
    for r in rows:
        if r["role"] != "primary":
            continue
        if r["effect"] is None or r["ci_low"] is None or r["n_treatment"] is None:
            return {
                "value": None,
                "value_ci_low": None,
                "value_ci_high": None,
                "cost": budget.cost,
                "roi": None,
                "roi_ci_low": None,
                "roi_ci_high": None,
                "value_per_unit": budget.value_per_unit,
            }
        n = r.get("assigned_treatment") or r["n_treatment"]
        unit = budget.value_per_unit * n * sign
        a, b = r["ci_low"] * unit, r["ci_high"] * unit
        value += r["effect"] * unit
        low += min(a, b)
        high += max(a, b)
    cost = budget.cost

    def ratio(v):
        return (v - cost) / cost if cost else None

    return {
        "value": _finite(value),
        "value_ci_low": _finite(low),
        "value_ci_high": _finite(high),
        "cost": cost,
        "roi": _finite(ratio(value)),
        "roi_ci_low": _finite(ratio(low)),
        "roi_ci_high": _finite(ratio(high)),
        "value_per_unit": budget.value_per_unit,
    }
