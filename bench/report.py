"""Medians, ratios against the targets of the issue, accuracy over seeds, and the markdown summary."""

from __future__ import annotations

import statistics

from measure import median_or_none

METRICS = ("images_per_second", "steady_epoch_seconds", "wall_seconds", "peak_rss_mb", "cpu_seconds", "test_accuracy")
MODELS = {"mnist": "MNIST (Torres)", "cifar10": "CIFAR-10 (TDS)"}
VARIANTS = {"plain": "plain tf.keras script", "cnnctl_f32": "cnnctl, precision float32",
            "cnnctl_auto": "cnnctl, precision auto", "cnnctl_auto_npz": "cnnctl, precision auto, npz arrays"}


def medians(runs: list[dict]) -> dict:
    ok = [r for r in runs if r.get("ok")]
    summary = {m: median_or_none(r.get(m) for r in ok) for m in METRICS}
    precisions = sorted({r["precision"] for r in ok if r.get("precision")})
    return summary | {"runs": len(runs), "ok_runs": len(ok), "precision": "/".join(precisions) or None,
                      "steady": all(r.get("steady") for r in ok) if ok else None}


def _ratio(b, a):
    return b / a if a and b is not None else None


def _met(value, target):
    if value is None or target is None:
        return None
    op, bound = target
    return {">=": value >= bound, "<=": value <= bound, "abs<=": abs(value) <= bound}[op]


def _row(measure, model, a_text, b_text, value, value_text, target=None, target_text="-"):
    return {"measure": measure, "model": model, "reference": a_text, "cnnctl": b_text, "value": value,
            "value_text": value_text, "target": list(target) if target else None, "target_text": target_text,
            "met": _met(value, target)}


def _num(value, fmt):
    return "failed" if value is None else format(value, fmt)


def model_rows(model: str, med: dict) -> list[dict]:
    """Ratios cnnctl / plain for one model: images/s, wall time, peak RSS, accuracy difference."""
    plain, rows, name = med.get("plain", {}), [], MODELS[model]
    for key, ips_target in (("cnnctl_auto", (">=", 1.5)), ("cnnctl_f32", (">=", 0.98))):
        b = med.get(key)
        if not b:
            continue
        what = f"precision {'auto -> ' + str(b['precision']) if key == 'cnnctl_auto' else 'float32'}"
        for metric, label, fmt, target in (
                ("images_per_second", "training images/s (steady)", ",.0f", ips_target),
                ("wall_seconds", "wall time, s", ".1f", None),
                ("peak_rss_mb", "peak RSS, MB", ",.0f", ("<=", 0.5))):
            ratio = _ratio(b[metric], plain.get(metric))
            rows.append(_row(f"{label}, {what}", name, _num(plain.get(metric), fmt), _num(b[metric], fmt), ratio,
                             _num(ratio, ".2f") + "x" * (ratio is not None), target,
                             f"{target[0]} {target[1]}x" if target else "-"))
        a_acc, b_acc = plain.get("test_accuracy"), b["test_accuracy"]
        diff = round((b_acc - a_acc) * 100, 4) + 0.0 if a_acc is not None and b_acc is not None else None
        rows.append(_row(f"final test accuracy, {what}", name, _num(a_acc, ".4f"), _num(b_acc, ".4f"), diff,
                         _num(diff, "+.2f") + " points" * (diff is not None), ("abs<=", 0.5), "within 0.5 points"))
    return rows


def over_seeds(runs: dict) -> dict:
    """Per variant, the final test accuracy of each completed seeded run, their mean and sample sd (None for
    one seed); {} when no run had a seed."""
    out = {}
    for key, records in runs.items():
        done = [r for r in records if r.get("ok") and r.get("seed") is not None]
        if done:
            accuracies = [r["test_accuracy"] for r in done]
            out[key] = {"seeds": [r["seed"] for r in done], "test_accuracy": accuracies,
                        "mean": statistics.mean(accuracies),
                        "sd": statistics.stdev(accuracies) if len(accuracies) > 1 else None,
                        "precision": "/".join(sorted({r["precision"] for r in done if r.get("precision")})) or None}
    return out


PRECISION_RULE = ("mixed precision costs accuracy if the mean test accuracy at precision auto is below float32's by "
                  "more than the larger of the two variants' seed sds; a difference within it is no measurable cost; "
                  "with fewer than 2 seeds per variant there is no sd and no verdict")


def precision_verdict(seeded: dict) -> dict | None:
    """Does precision auto (mixed precision) cost test accuracy against float32? By PRECISION_RULE."""
    auto, f32 = seeded.get("cnnctl_auto"), seeded.get("cnnctl_f32")
    if not auto or not f32:
        return None
    diff = round((auto["mean"] - f32["mean"]) * 100, 4) + 0.0
    sds = [auto["sd"], f32["sd"]]
    bound = None if None in sds else round(max(sds) * 100, 4)
    if auto["precision"] == "float32":
        verdict = "nothing to judge: precision auto chose float32 on this machine"
    elif bound is None:
        verdict = "no verdict: fewer than 2 seeds"
    elif abs(diff) <= bound:
        verdict = "no measurable cost"
    else:
        verdict = "costs accuracy" if diff < 0 else "more accurate than float32 (beyond the seed spread)"
    text = (f"precision auto ({auto['precision']}) against float32, seeds {_seeds(auto['seeds'])} / "
            f"{_seeds(f32['seeds'])}: difference of means (auto - float32) {diff:+.2f} points, larger seed sd "
            f"{'n/a' if bound is None else f'{bound:.2f} points'}: **{verdict}**")
    return {"difference_points": diff, "larger_sd_points": bound, "verdict": verdict, "text": text,
            "rule": PRECISION_RULE}


def _seeds(seeds):
    return ", ".join(map(str, seeds))


def startup_rows(startup: dict, cifar_med: dict | None) -> list[dict]:
    rows = []
    tf, help_, summary = (startup.get(k, {}).get("median") for k in ("import_tensorflow", "cnnctl_help",
                                                                     "cnnctl_summary"))
    if startup:
        ratio = _ratio(help_, tf)
        rows.append(_row("`cnnctl --help` wall time, s (vs `python -c \"import tensorflow\"`)", "-",
                         _num(tf, ".2f"), _num(help_, ".2f"), help_,
                         f"{_num(help_, '.2f')} s ({_num(ratio, '.2f')}x import)", ("<=", 0.3), "<= 0.3 s"))
        ratio = _ratio(summary, tf)
        rows.append(_row("`cnnctl summary configs/cifar10.yaml` wall time, s (vs import tensorflow)", "-",
                         _num(tf, ".2f"), _num(summary, ".2f"), ratio, _num(ratio, ".2f") + "x" * bool(ratio),
                         ("<=", 1.3), "<= 1.3x"))
    if cifar_med and "cnnctl_auto_npz" in cifar_med:
        folder, arrays = cifar_med["cnnctl_auto"]["steady_epoch_seconds"], cifar_med["cnnctl_auto_npz"]["steady_epoch_seconds"]
        ratio = _ratio(folder, arrays)
        rows.append(_row("epoch seconds (steady): JPEG folders, cached (vs the same images as npz arrays)",
                         MODELS["cifar10"], _num(arrays, ".2f"), _num(folder, ".2f"), ratio,
                         _num(ratio, ".2f") + "x" * bool(ratio), ("<=", 1.1), "<= 1.1x"))
    return rows


def _verdict(met):
    return "n/a" if met is None else ("met" if met else "**NOT met**")


def markdown(results: dict) -> str:
    m, s = results["machine"], results["settings"]
    cpu = m["cpu"]
    flags = ", ".join(f"{f.upper()} {'yes' if cpu.get(f) else 'no'}" for f in ("avx512_bf16", "amx_bf16", "amx_tile"))
    load = " / ".join(f"{x:.2f}" for x in (m["load_average_at_start"][0], (m.get("load_average_at_end") or [0])[0]))
    sizes = "; ".join(f"{MODELS[k]}: {v['train_images']:,} train / {v['test_images']:,} test images"
                      for k, v in results["models"].items() if "train_images" in v)
    lines = [
        f"## cnnctl vs plain tf.keras, {m['date']}{' (--quick)' if s['quick'] else ''}",
        "",
        f"Machine: {cpu['model']}, {m['logical_cpus']} logical CPUs ({m['usable_cpus']} usable); {flags}; "
        f"TensorFlow {m['tensorflow']}, Keras {m['keras']}, Python {m['python']}; cnnctl {m['cnnctl']['commit']}"
        f"{' (uncommitted changes)' if m['cnnctl']['dirty'] else ''}. Load average (1 min) at start / end: {load}.",
        "",
        f"Settings: {s['epochs']} epoch(s), {s['repeats']} alternating repetition(s) (medians)"
        + (f", CIFAR-10 one per seed ({_seeds(s['seeds'])})" if s.get("seeds") and "cifar10" in results["models"] else "")
        + f"; {sizes}. "
        "Images/s = training images / median epoch seconds excluding the first epoch (both sides: "
        "on_epoch_begin to on_epoch_end, validation included where the tutorial validates).",
        "",
        "| measure | model | reference | cnnctl | cnnctl vs reference | target | result |",
        "|---|---|---|---|---|---|---|",
    ]
    for row in results["rows"]:
        lines.append(f"| {row['measure']} | {row['model']} | {row['reference']} | {row['cnnctl']} | "
                     f"{row['value_text']} | {row['target_text']} | {_verdict(row['met'])} |")
    lines += ["", "Per variant (medians):", "",
              "| model | variant | ok runs | precision | images/s | epoch s | wall s | peak RSS MB | CPU s | test acc |",
              "|---|---|---|---|---|---|---|---|---|---|"]
    for model, data in results["models"].items():
        for key, med in data.get("medians", {}).items():
            lines.append(f"| {MODELS[model]} | {VARIANTS[key]} | {med['ok_runs']}/{med['runs']} | {med['precision']} | "
                         f"{_num(med['images_per_second'], ',.0f')} | {_num(med['steady_epoch_seconds'], '.2f')} | "
                         f"{_num(med['wall_seconds'], '.1f')} | {_num(med['peak_rss_mb'], ',.0f')} | "
                         f"{_num(med['cpu_seconds'], '.1f')} | {_num(med['test_accuracy'], '.4f')} |")
    seeded = {model: data for model, data in results["models"].items() if data.get("accuracy_over_seeds")}
    if seeded:
        lines += ["", "Final test accuracy over seeds (mean ± sample sd):", "",
                  "| model | variant | precision | seeds | test accuracy per seed | mean ± sd |", "|---|---|---|---|---|---|"]
    for model, data in seeded.items():
        for key, acc in data["accuracy_over_seeds"].items():
            lines.append(f"| {MODELS[model]} | {VARIANTS[key]} | {acc['precision']} | {_seeds(acc['seeds'])} | "
                         f"{', '.join(format(a, '.4f') for a in acc['test_accuracy'])} | {acc['mean']:.4f} ± "
                         f"{'n/a' if acc['sd'] is None else format(acc['sd'], '.4f')} |")
    for model, data in seeded.items():
        if verdict := data.get("precision_verdict"):
            lines += ["", f"Mixed precision, {MODELS[model]}: {verdict['text']}. Rule: {verdict['rule']}."]
    lines += [""] + [f"- {note}" for note in results["notes"]]
    if results["failures"]:
        lines += ["", f"**{len(results['failures'])} failure(s):**", ""]
        lines += [f"- {failure.splitlines()[0]}" for failure in results["failures"]]
    return "\n".join(lines).rstrip() + "\n"
