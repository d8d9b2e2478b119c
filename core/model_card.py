"""The model card (``README.md``) of an export bundle, written from its metadata.json alone.

Assembled from sections: core writes those every model shares, the bundle's input reader
describes its input handling, and the domain plug-ins add their limitations.
"""

from __future__ import annotations

from typing import Any

from core.bundle import LAUNCHER, PREDICTOR, REQUIREMENTS
from core.contracts import InputContract
from core.plugins import DomainPlugin, plugin_of
from core.readers import READERS, InputReader, read_contract
from core.readers import card_value as _fmt


def _intended_use(meta: dict[str, Any], reader: InputReader, inp: InputContract) -> list[str]:
    shape = [None, *inp.network_shape]
    detection = meta.get("detection")
    what = (f"detection of {len(meta['class_names'])} object classes ({detection['detector']}: "
            "boxes with a class and a score)" if detection
            else f"{meta['task']} into {len(meta['class_names'])} classes")
    lines = [
        "## Intended use",
        "",
        f"- **Domain / task**: {meta['domain']}, {what}"
        + (" (per pixel)" if meta["task"] == "segmentation" else "")
        + (" (independent labels, sigmoid)" if meta["task"] == "multilabel" else "") + ".",
        f"- **Reader**: `{inp.reader}`.",
        reader.card_channels(inp),
    ]
    lines += reader.card_input(inp, f"{shape[2]}x{shape[3]}")
    scaling = reader.card_scaling(inp)
    out = meta["output"]
    lines.append(f"- **Normalisation**: (x - mean) / std per channel, mean {_fmt(inp.mean)}, "
                 f"std {_fmt(inp.std)}" + (f"; {scaling}" if scaling else "") + ".")
    if detection:
        lines += [
            f"- **Network**: `model.onnx` takes ONE image per run, input `input` float32 "
            f"(1, {shape[1]}, {shape[2]}, {shape[3]}); outputs "
            + ", ".join(f"`{name}`" for name in out["outputs"])
            + ": boxes (N, 4) xyxy in network-input pixels, scores (N,), labels (N,) int64 "
            "(0-based class index)"
            + ("; masks (N, 1, H, W) probabilities" if "masks" in out["outputs"] else "") + ".",
            f"- **Post-processing inside the graph**: box decoding, score >= "
            f"{_fmt(detection['score_thresh'])}, per-class NMS at IoU {_fmt(detection['nms_thresh'])}, "
            f"at most {detection['detections_per_img']} detections per image. The predictor runs "
            "the graph once per image, so any number of images works.",
            "- **Boxes in the outputs**: scaled back to the pixels of each stored image (as its "
            "reader returns it).",
            "",
        ]
    else:
        lines += [
            f"- **Network**: `model.onnx`, input `input` float32 NCHW (N, {shape[1]}, {shape[2]}, "
            f"{shape[3]}), output `logits` ({out['shape']}), probabilities by {out['activation']}"
            + ("; INT8 dynamically quantised (see Quantisation)" if meta.get("quantization") else "")
            + ".",
            "",
        ]
    return lines


def _classes(meta: dict[str, Any]) -> list[str]:
    return ["## Classes", "", "| index | class |", "|---|---|",
            *[f"| {i} | {name} |" for i, name in enumerate(meta["class_names"])], ""]


def _training_data(meta: dict[str, Any]) -> list[str]:
    data = meta.get("training_data") or {}
    lines = ["## Training data", ""]
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
    return [*lines, ""]


def _test_metrics(meta: dict[str, Any]) -> list[str]:
    metrics = meta.get("metrics")
    lines = ["## Test metrics", ""]
    values = (metrics or {}).get("metrics") if isinstance(metrics, dict) else None
    if values:
        count = (f"{metrics['num_labelled_pixels']} labelled test pixels"
                 if "num_labelled_pixels" in metrics
                 else f"{metrics['num_images']} test images, {_fmt(metrics.get('num_true_boxes'))} "
                      "true boxes" if "num_images" in metrics  # a detection report
                 else f"{_fmt(metrics.get('num_samples'))} test samples")
        lines += [f"From the run's `metrics.json` ({count}; they describe the checkpoint tested "
                  "in that run).", "",
                  "| metric | value |", "|---|---|",
                  *[f"| {k} | {_fmt(v)} |" for k, v in values.items()]]
    else:
        lines.append("Not known: no `metrics.json` was found in the checkpoint's run directory "
                     "(run `convnext-domains test` on it before exporting).")
    return [*lines, ""]


def _operating_point(meta: dict[str, Any]) -> list[str]:
    decision = meta.get("decision")
    lines = ["## Operating point", ""]
    if meta.get("detection"):
        threshold = decision["threshold"]
        fallback = meta["detection"]["score_thresh"]
        lines += [
            f"Rule: {decision['rule']}. Score threshold **{_fmt(threshold)}**, chosen on "
            f"validation for object recall {_fmt(decision['target_recall'])}"
            if threshold is not None else
            f"Rule: {decision['rule']}. No threshold was chosen on validation: the predictor "
            f"keeps every detection the graph returns (score >= score_thresh {_fmt(fallback)}) "
            "and says so",
            "",
            "`detections.csv` lists every detection the graph returns with whether it reaches "
            "the threshold; `detections.json` holds those that do. Override it at prediction "
            "time, never by editing `metadata.json` (that breaks its digest):",
            "",
            "```bash",
            "convnext-domains predict --bundle DIR INPUT... --out OUT --score-threshold T",
            "```",
        ]
        return [*lines, ""]
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
    return [*lines, ""]


def _parity(meta: dict[str, Any]) -> list[str]:
    parity = meta["parity"]
    if meta.get("detection"):
        return ["## Export parity", "",
                f"On {parity['samples']} inputs ({parity['inputs']}), ONNX Runtime and PyTorch "
                f"Lightning find the same number of detections per image "
                f"({_fmt(parity['detections'])}) with the same labels; boxes differ by at most "
                f"{parity['max_box_diff_px']:.3g} px (tolerance {parity['box_tolerance_px']:g}) and "
                f"scores by {parity['max_score_diff']:.3g} (tolerance {parity['score_tolerance']:g})"
                + (f"; instance-mask probabilities by {parity['max_mask_diff']:.3g}"
                   if parity.get("max_mask_diff") is not None else "") + "."
                + (" The detector found nothing on these inputs, so only the count was compared."
                   if not any(parity["detections"]) else ""), ""]
    graph = (" with the fp32 graph traced before quantisation" if meta.get("quantization") else "")
    return ["## Export parity", "",
            f"On {parity['samples']} inputs ({parity['inputs']}), ONNX Runtime's probabilities"
            f"{graph} differ from PyTorch Lightning's by at most {parity['max_abs_diff']:.3g} "
            f"(tolerance {parity['tolerance']:g})."
            + (" The INT8 `model.onnx` is compared under Quantisation." if graph else ""), ""]


def _quantization(meta: dict[str, Any]) -> list[str]:
    """What ``export --quantize int8`` changed and measured; nothing for an fp32 bundle."""
    q = meta.get("quantization")
    if not q:
        return []
    speed, kept = q["speed"], q["float_nodes"]
    unit = {"segmentation": " (per pixel)", "multilabel": " (per label at 0.5)"}.get(meta["task"], "")
    return [
        "## Quantisation",
        "",
        f"`model.onnx` is INT8 dynamically quantised ({q['method']}). Quantised: "
        f"{q['quantized_nodes']} node(s) of type {', '.join(q['op_types'])} (ONNX Runtime's "
        "MatMul class includes Gemm)"
        + (f"; kept in float: {', '.join(f'{n} {op}' for op, n in kept.items())}" if kept else "")
        + ".",
        "",
        "| measured against PyTorch Lightning | value |",
        "|---|---|",
        f"| max probability difference, INT8 | {q['max_prob_diff']:.3g} |",
        f"| max probability difference, fp32 graph | {q['fp32_max_prob_diff']:.3g} |",
        f"| top-1 agreement{unit} | {q['top1_agreement']:.3f} |",
        f"| export gate (`--int8-tolerance`) | {q['tolerance']:g} |",
        "",
        f"On the {q['samples']} parity inputs ({q['inputs']}), as a batch and the first alone. "
        "A decision at a threshold t can change only where the fp32 probability lies within "
        "about that difference of t. Because activations are scaled per run, an image's "
        "probabilities also vary slightly with the other images in its batch.",
        "",
        f"Speed at export, on the export machine ({speed['cpu_cores']} CPU cores, ONNX Runtime "
        f"default threads, batch {speed['batch']}, median of {speed['rounds']} alternating runs): "
        f"INT8 {speed['int8_ms_per_image']:.3g} ms/image, fp32 {speed['fp32_ms_per_image']:.3g} "
        f"ms/image (speed-up {speed['speedup']:.2f}x). Measure on your own hardware before "
        "relying on it.",
        "",
    ]


def _limitations(meta: dict[str, Any], reader: InputReader, plugins: list[DomainPlugin],
                 inp: InputContract) -> list[str]:
    backbone, shape = meta["backbone"], [None, *inp.network_shape]
    lines = ["## Limitations", ""]
    if backbone["pretrained"] == "none":
        lines.append("- Trained from scratch (no pretrained weights): expect less robustness than "
                     "a fine-tuned pretrained model.")
    else:
        lines.append(f"- Pretrained weights: {backbone['pretrained']}; licence: {backbone['weight_licence']}.")
    test_size = ((meta.get("training_data") or {}).get("split_sizes") or {}).get("test")
    lines.append(f"- Metrics come from a held-out split of {_fmt(test_size) if test_size else 'an unknown number of'} "
                 f"{reader.sample_unit}; they do not show performance on other sites, "
                 "devices, sensors or periods.")
    lines.append("- Inputs must follow the contract above (reader, channels, window, size, "
                 "normalisation); other inputs give meaningless outputs.")
    for plugin in plugins:
        lines += plugin.card_limitations
    if meta["task"] == "segmentation":
        lines.append(f"- The network takes {shape[2]}x{shape[3]} tiles; larger images are "
                     "predicted tile by tile.")
    if meta.get("detection"):
        lines.append(f"- Every image is resized to {shape[2]}x{shape[3]} before detection: objects "
                     "much smaller than the training ones after that resize are missed.")
        if "masks" in meta["output"]["outputs"]:
            lines.append("- Instance masks (probability > 0.5, in the stored image's pixels) are "
                         "COCO RLE `segmentation`s in detections.json; detections.csv holds boxes only.")
    return [*lines, ""]


def _how_to_run(meta: dict[str, Any], reader: InputReader) -> list[str]:
    predictor, backbone = meta.get("predictor") or {}, meta["backbone"]
    return [
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
        "It writes into OUT (`{stem}`: an input's file name without its extension):",
        "",
        *[f"- `{name}`: {what}" for name, what in reader.outputs(meta["task"]).items()],
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


def _plugins(meta: dict[str, Any], inp: InputContract) -> list[DomainPlugin]:
    """The plug-ins of the task's domain and of the reader's, each once (a core task may read
    a domain's files: a DICOM classifier keeps the medical domain's limitations)."""
    reader_path = READERS.path_of(inp.reader)
    found = [plugin_of(str(meta["task_class"])), plugin_of(reader_path)]
    return list({id(p): p for p in found if p is not None}.values())


def model_card(meta: dict[str, Any]) -> str:
    """README.md of the bundle: what the model is for, what it expects and how far to trust it.

    core writes the sections every model shares; the bundle's reader and the domain plug-ins
    of its task and reader supply what is theirs (input handling, limitations).
    """
    inp = read_contract(meta["input"], meta["schema_version"])
    reader = READERS[inp.reader]
    title = meta["task_class"].rsplit(".", 1)[-1]
    lines = [
        f"# {title}: {meta['domain']} {meta['task']} model",
        "",
        "Exported by convnext-domains (bundle schema "
        f"{meta['schema_version']}, {meta['created']}). `metadata.json` holds the full input "
        "contract and the sha256 of every file; the predictor refuses a modified bundle.",
        "",
        *_intended_use(meta, reader, inp),
        *_classes(meta),
        *_training_data(meta),
        *_test_metrics(meta),
        *_operating_point(meta),
        *_parity(meta),
        *_quantization(meta),
        *_limitations(meta, reader, _plugins(meta, inp), inp),
        *_how_to_run(meta, reader),
    ]
    return "\n".join(lines)
