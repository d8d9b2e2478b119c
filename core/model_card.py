"""The model card (``README.md``) of an export bundle, written from its metadata.json alone."""

from __future__ import annotations

from typing import Any

from core.bundle import LAUNCHER, PREDICTOR, REQUIREMENTS


def _fmt(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.4g}"
    if isinstance(value, list):
        return ", ".join(_fmt(v) for v in value)
    return "—" if value is None else str(value)


def model_card(meta: dict[str, Any]) -> str:
    """README.md of the bundle: what the model is for, what it expects and how far to trust it."""
    inp, out, data = meta["input"], meta["output"], meta.get("training_data") or {}
    reader, shape = inp.get("reader"), meta["input"]["shape"]
    decision, metrics, parity = meta.get("decision"), meta.get("metrics"), meta["parity"]
    title = meta["task_class"].rsplit(".", 1)[-1]
    lines = [
        f"# {title}: {meta['domain']} {meta['task']} model",
        "",
        "Exported by convnext-domains (bundle schema "
        f"{meta['schema_version']}, {meta['created']}). `metadata.json` holds the full input "
        "contract and the sha256 of every file; the predictor refuses a modified bundle.",
        "",
        "## Intended use",
        "",
        f"- **Domain / task**: {meta['domain']}, {meta['task']} into {len(meta['class_names'])} classes"
        + (" (per pixel)" if meta["task"] == "segmentation" else "")
        + (" (independent labels, sigmoid)" if meta["task"] == "multilabel" else "") + ".",
        f"- **Reader**: `{reader}`.",
    ]
    channel_names = inp.get("channel_names") or inp.get("bands")
    if channel_names:
        lines.append(f"- **Channels / bands** ({shape[1]}): {_fmt(channel_names)}"
                     + (f"; spectral indices {_fmt(inp['indices'])}" if inp.get("indices") else "") + ".")
    else:
        lines.append(f"- **Channels**: {shape[1]}" + (f" ({inp['channels']})" if inp.get("channels") else "") + ".")
    # issue 10: move to the domain plug-in (each reader's section comes from its domain)
    if reader == "dicom":
        lines.append(f"- **DICOM**: modality LUT {'on' if inp.get('modality_lut') else 'off'}, "
                     f"window(s) {_fmt(inp.get('window'))}, frames {_fmt(inp.get('frames'))}, "
                     f"target spacing {_fmt(inp.get('target_spacing'))}.")
    size = f"{shape[2]}x{shape[3]}"
    # issue 10: move to the domain plug-in
    if reader == "geotiff_scene":
        lines.append(f"- **Size**: tiles of {size} pixels; whole scenes are cut into overlapping "
                     f"tiles (overlap {_fmt(inp.get('predict_overlap'))}) and blended.")
    else:
        lines.append(f"- **Size**: resized to {size} (height x width).")
    lines += [
        f"- **Normalisation**: (x - mean) / std per channel, mean {_fmt(inp.get('mean'))}, "
        f"std {_fmt(inp.get('std'))}"
        # The base contract's integer scaling applies to the PIL image reader only; DICOM and
        # GeoTIFF readers have their own value ranges (modality LUT + window, raw band values).
        + (f"; {inp['input_scaling']}" if reader == "image" and inp.get("input_scaling") else "")
        + ".",
        f"- **Network**: `model.onnx`, input `input` float32 NCHW (N, {shape[1]}, {shape[2]}, "
        f"{shape[3]}), output `logits` "
        f"({out['shape']}), probabilities by {out['activation']}.",
        "",
        "## Classes",
        "",
        "| index | class |",
        "|---|---|",
        *[f"| {i} | {name} |" for i, name in enumerate(meta["class_names"])],
        "",
        "## Training data",
        "",
    ]
    if data:
        lines += [
            f"- samples: {_fmt(data.get('num_samples'))}; split sizes: "
            + ", ".join(f"{k} {v}" for k, v in (data.get("split_sizes") or {}).items()),
            f"- training class counts: {_fmt(data.get('train_class_counts'))}",
            f"- sample list sha256: `{data.get('sample_list_sha256')}` (split seed {_fmt(data.get('split_seed'))})",
            "",
            "The fingerprint identifies the training data without containing it.",
        ]
    else:
        lines.append("Not recorded in the checkpoint.")
    lines += ["", "## Test metrics", ""]
    values = (metrics or {}).get("metrics") if isinstance(metrics, dict) else None
    if values:
        count = (f"{metrics['num_labelled_pixels']} labelled test pixels"
                 if "num_labelled_pixels" in metrics else f"{_fmt(metrics.get('num_samples'))} test samples")
        lines += [f"From the run's `metrics.json` ({count}; they describe the checkpoint tested "
                  "in that run).", "",
                  "| metric | value |", "|---|---|",
                  *[f"| {k} | {_fmt(v)} |" for k, v in values.items()]]
    else:
        lines.append("Not known: no `metrics.json` was found in the checkpoint's run directory "
                     "(run `convnext-domains test` on it before exporting).")
    lines += ["", "## Operating point", ""]
    if decision:
        threshold = decision["threshold"]
        lines += [
            f"Positive classes: {_fmt(decision['positive_classes'])}. Rule: "
            f"{decision['rule']}, threshold **{_fmt(threshold)}**"
            + (" (none chosen on validation; the training code falls back to 0.5)" if threshold is None else "")
            + f", chosen on validation for target recall {_fmt(decision['target_recall'])}.",
            "",
            "Override it at prediction time, never by editing `metadata.json` (that breaks its digest):",
            "",
            "```bash",
            "convnext-domains predict --bundle DIR INPUT... --out OUT --threshold T",
            "```",
        ]
    else:
        lines.append("None: the predicted class is the most probable one"
                     + (" per pixel." if meta["task"] == "segmentation" else
                        "; multilabel outputs use 0.5 per label." if meta["task"] == "multilabel" else "."))
    lines += [
        "",
        "## Export parity",
        "",
        f"On {parity['samples']} inputs ({parity['inputs']}), ONNX Runtime's probabilities "
        f"differ from PyTorch Lightning's by at most {parity['max_abs_diff']:.3g} "
        f"(tolerance {parity['tolerance']:g}).",
        "",
        "## Limitations",
        "",
    ]
    backbone = meta["backbone"]
    if backbone["pretrained"] == "none":
        lines.append("- Trained from scratch (no pretrained weights): expect less robustness than "
                     "a fine-tuned pretrained model.")
    else:
        lines.append(f"- Pretrained weights: {backbone['pretrained']}; licence: {backbone['weight_licence']}.")
    test_size = (data.get("split_sizes") or {}).get("test")
    # issue 10: move to the domain plug-in
    unit = "spatial blocks of the training scene" if reader == "geotiff_scene" else "samples of the training source"
    lines.append(f"- Metrics come from a held-out split of {_fmt(test_size) if test_size else 'an unknown number of'} "
                 f"{unit}; they do not show performance on other sites, "
                 "devices, sensors or periods.")
    lines.append("- Inputs must follow the contract above (reader, channels, window, size, "
                 "normalisation); other inputs give meaningless outputs.")
    # issue 10: move to the domain plug-in
    if meta["domain"] == "medical" or reader == "dicom":
        lines.append("- **Not a medical device.** For research only; not validated for clinical "
                     "use or diagnosis.")
    if meta["task"] == "segmentation":
        lines.append(f"- The network takes {size} tiles; larger images are predicted tile by tile.")
    predictor = meta.get("predictor") or {}
    lines += [
        "",
        "## How to run",
        "",
        "This folder runs on its own, without torch or a convnext-domains checkout (Python "
        f"{predictor.get('python', '>=3.10')}; `{REQUIREMENTS}`: "
        f"{', '.join(predictor.get('requirements') or [])}):",
        "",
        "```bash",
        f"pip install -r DIR/{REQUIREMENTS}",
        f"python DIR/{LAUNCHER} INPUT... --out OUT",
        "```",
        "",
        f"`{PREDICTOR}/` holds the predictor's code, copied from convnext-domains at export and "
        "sealed with the model. Where convnext-domains is installed, this is the same as:",
        "",
        "```bash",
        "convnext-domains predict --bundle DIR INPUT... --out OUT",
        "```",
        "",
        f"Backbone: {backbone['name']}, depths {_fmt(backbone['depths'])}, dims {_fmt(backbone['dims'])}, "
        f"{backbone['in_chans']} input channels.",
        "",
    ]
    return "\n".join(lines)
