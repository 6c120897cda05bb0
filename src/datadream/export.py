"""Export what a run made, in formats other tools read without datadream.

    datadream export RUN OUT --what classifier   # transformers CLIPModel / SiglipModel (LoRA merged) + processor
    datadream export RUN OUT --what adapters     # diffusers layout and kohya (A1111 / ComfyUI) files
    datadream export RUN OUT --what dataset      # image folder + metadata.jsonl (Hugging Face imagefolder)

OUT must be new or empty; it is written under a temporary name and renamed when complete, so it
never holds half an export.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
from pathlib import Path

import torch

from datadream import atomic
from datadream.errors import UserError
from datadream.layout import LORA_WEIGHTS, UNIT_MARKER
from datadream.progress import progress
from datadream.runs import Run, open_run

log = logging.getLogger(__name__)

WHAT = ("classifier", "adapters", "dataset")
CLASSES_FILE = "datadream_classes.json"
METADATA_FILE = "metadata.jsonl"
DIFFUSERS_FOLDER = "diffusers"
KOHYA_FOLDER = "kohya"


def export(run_dir: Path, out: Path, what: str) -> Path:
    """Write the run's `what` (one of WHAT) to the new folder `out`; returns it."""
    if what not in WHAT:
        raise UserError(f"--what {what!r}: use one of {', '.join(WHAT)}")
    run = open_run(run_dir)
    out = Path(out).resolve()
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise UserError(f"{out} already exists and is not empty; export into a new or empty folder")
    if out == run.layout.root or run.layout.root in out.parents:
        raise UserError(f"{out} is inside the run {run.layout.root}; export to a folder outside it")
    writer = {"classifier": export_classifier, "adapters": export_adapters, "dataset": export_dataset}[what]
    atomic.remove_dead_temporaries(out.parent, out.name)  # an export to `out` that was killed
    with atomic.staged_directory(out) as staging:
        writer(run, staging)
    log.info("export: %s of %s written to %s", what, run.layout.root, out)
    return out


# --- classifier ---------------------------------------------------------------------------------

def export_classifier(run: Run, out: Path) -> None:
    """The classifier as one stock transformers model (`CLIPModel`, `SiglipModel`; LoRA merged
    into the weights), its preprocessing (components/classifiers/backbones.py,
    `save_preprocessing`), and the class prompts and their normalised text features (so a user
    can skip the text tower)."""
    from datadream.artifacts import read_classifier_marker
    from datadream.classifier_files import class_prompts, load_classifier

    marker = read_classifier_marker(run)
    classifier = load_classifier(run, marker)
    if marker["train_on"] != "none":
        classifier.merge_lora()
    model = classifier.model.eval()
    names, prompts = class_prompts(run)
    with torch.no_grad():
        text = classifier.text_features(classifier.tokenize(prompts))
        logit_terms = classifier.logit_terms()
    model.config.id2label = dict(enumerate(names))
    model.config.label2id = {name: label for label, name in enumerate(names)}
    model.save_pretrained(out)
    classifier.save_preprocessing(out)
    atomic.write_json(out / CLASSES_FILE, {
        "labels": list(range(len(names))),
        "class_names": names,
        "prompts": classifier.model_text(prompts),  # as the text tower reads them
        **logit_terms,
        "train_on": marker["train_on"],
        "base_model": run.config.classifier.model,
        # L2-normalised, in label order: logits = logit_scale * normalised image feature @ these.T
        # (+ logit_bias for SigLIP)
        "text_features": text.tolist(),
    })


# --- adapters -----------------------------------------------------------------------------------

def adapter_parts(adapter: Path) -> set[str]:
    """The pipeline components an adapter file holds LoRA for (unet, transformer, text_encoder...)."""
    from safetensors import safe_open

    with safe_open(adapter / LORA_WEIGHTS, "pt") as handle:
        return {key.split(".", 1)[0] for key in handle.keys()}


def kohya_state_dict(adapter: Path, sdxl: bool | None = None) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """An SD 1.x/2.x or SDXL adapter folder's LoRA in the kohya key format (`lora_unet_*`, and
    `lora_te_*` for SD or `lora_te1_*` / `lora_te2_*` for SDXL, with `.lora_down` / `.lora_up` /
    `.alpha`) that A1111, ComfyUI and diffusers read, and the file's metadata (rank and alpha).
    `sdxl`: the generator's family when known (a UNet-only SDXL adapter looks like an SD one)."""
    from diffusers import StableDiffusionXLPipeline
    from diffusers.utils import convert_state_dict_to_kohya, convert_state_dict_to_peft, convert_unet_state_dict_to_peft

    # The file reader is the same for both UNet families.
    state, _, metadata = StableDiffusionXLPipeline.lora_state_dict(str(adapter), return_lora_metadata=True)
    if sdxl is None:
        sdxl = any(k.startswith("text_encoder_2.") for k in state)
    peft_state: dict[str, torch.Tensor] = {}
    # diffusers stores the parts in different legacy spellings, each with its own converter.
    converters = (("unet", convert_unet_state_dict_to_peft), ("text_encoder", convert_state_dict_to_peft),
                  ("text_encoder_2", convert_state_dict_to_peft))
    for part, convert in converters:
        keys = {k[len(part) + 1:]: v for k, v in state.items() if k.startswith(part + ".")}
        if keys:
            peft_state.update({f"{part}.{k}": v for k, v in convert(keys).items()})
    if len(peft_state) != len(state):
        raise RuntimeError(f"{adapter}: unexpected LoRA keys outside unet/text_encoder/text_encoder_2")
    if not metadata:
        raise UserError(f"{adapter}: the adapter file records no rank and alpha; adapt it again with this version")
    alphas = {}
    for part, _ in converters:
        if any(k.startswith(part + ".") for k in peft_state):
            if metadata.get(f"{part}.alpha_pattern") or metadata.get(f"{part}.rank_pattern"):
                raise UserError(f"{adapter}: per-module ranks or alphas have no kohya equivalent here")
            alphas[part] = float(metadata[f"{part}.lora_alpha"])
    kohya: dict[str, torch.Tensor] = {}
    for key, tensor in convert_state_dict_to_kohya(peft_state).items():
        part = "unet"
        for prefix, encoder in (("lora_te1_", "text_encoder"), ("lora_te2_", "text_encoder_2")):
            if key.startswith(prefix):
                # transformers 5 dropped CLIPTextModel's `text_model.` level, which A1111 and
                # ComfyUI expect (`lora_te_text_model_encoder_layers_N_...`). The converter writes
                # SDXL's `lora_te1_`; SD 1.x/2.x files use `lora_te_`.
                rest = key[len(prefix):]
                rest = rest if rest.startswith("text_model_") else "text_model_" + rest
                key = (prefix if sdxl else "lora_te_") + rest
                part = encoder
        if key.endswith(".alpha"):
            # The converter sets alpha = rank, right only when lora_alpha == r (ours: 16/16 for SD,
            # but any value can be configured).
            tensor = torch.tensor(alphas[part])
        kohya[key] = tensor.detach().float().contiguous()
    ranks = {part: int(metadata[f"{part}.r"]) for part in alphas}
    info = {"ss_network_module": "networks.lora", "ss_network_dim": str(ranks["unet"]),
            "ss_network_alpha": str(alphas["unet"]), "ss_output_name": adapter.name}
    if sdxl:
        info["ss_base_model_version"] = "sdxl_base_v1-0"
    return kohya, info


def _is_sdxl(model: str) -> bool | None:
    """Whether the run's generator is SDXL (None when its model_index.json cannot be read here)."""
    from datadream.components.generators.families import family_of

    try:
        return family_of(model).name == "sdxl"
    except UserError:
        return None


def export_adapters(run: Run, out: Path) -> None:
    """OUT/diffusers/<unit>/ (as in the run: `load_lora_weights(folder)`) and, for the UNet
    families (SD 1.x/2.x, SDXL), OUT/kohya/<unit>.safetensors (drop into A1111's or ComfyUI's LoRA
    folder). SD 3 and FLUX adapters get no kohya file: that layout fuses the attention's q, k and
    v into one projection, which per-projection adapters do not map onto without a conversion we
    have not written and tested; their diffusers files are what diffusers-format loaders read."""
    from safetensors.torch import save_file

    from datadream.artifacts import adapter_is_complete
    from datadream.components.generators.lora_weights import sort_safetensors_metadata
    from datadream.units import adapter_specs, store_of

    units = adapter_specs(run)
    if not units:
        raise UserError(f"{run.layout.root} has no adapters (adapt.mode=none); nothing to export")
    store = store_of(run)
    missing = [u.name for u in units if not adapter_is_complete(run, store, u)]
    if missing:
        raise UserError(f"{len(missing)} adapter(s) of {run.layout.root} are not finished (first: {missing[0]});"
                        " run `datadream adapt RUN` first")
    kohya = "unet" in adapter_parts(store.adapter(units[0].fingerprint))
    sdxl = _is_sdxl(run.config.generator.model)
    if kohya:
        (out / KOHYA_FOLDER).mkdir()
    else:
        log.info("export: %s adapters have no kohya layout here; writing the diffusers files only",
                 run.config.generator.model)
    for unit in progress(units, desc="export adapters", unit="adapter"):
        source = store.adapter(unit.fingerprint)
        target = out / DIFFUSERS_FOLDER / unit.name
        target.mkdir(parents=True)
        for name in (LORA_WEIGHTS, UNIT_MARKER):
            shutil.copy2(source / name, target / name)
        if not kohya:
            continue
        weights, info = kohya_state_dict(source, sdxl)
        info.update({"datadream_classes": json.dumps([c.name for c in unit.classes], ensure_ascii=False),
                     "datadream_prompts": json.dumps([c.prompt for c in unit.classes], ensure_ascii=False)})
        save_file(weights, out / KOHYA_FOLDER / f"{unit.name}.safetensors", metadata=info)
        sort_safetensors_metadata(out / KOHYA_FOLDER / f"{unit.name}.safetensors")


# --- dataset ------------------------------------------------------------------------------------

def link_or_copy(source: Path, target: Path) -> None:
    # A hard link costs no space for 500 images x 1,000 classes; the run's images are never
    # modified in place (written by rename), so sharing them is safe. Across file systems: copy.
    try:
        os.link(source, target)
    except OSError:
        shutil.copy2(source, target)


def export_dataset(run: Run, out: Path) -> None:
    """The synthetic set as an image folder: OUT/<label>-<slug>/<i>.png (safe, unique folder
    names that sort in label order) and OUT/metadata.jsonl with the exact class names."""
    from datadream.artifacts import completed_synthetic_set

    completed_synthetic_set(run)  # every image vouched for by its class marker, the index as synthesize wrote it
    index = run.layout.synthetic_index
    rows = [json.loads(line) for line in index.read_text(encoding="utf-8").splitlines() if line]
    slugs = {c.label: c.slug for c in run.manifest.classes}
    metadata = []
    for row in progress(rows, desc="export dataset", unit="img"):
        file_name = f"{slugs[row['label']]}/{Path(row['file']).name}"
        (out / file_name).parent.mkdir(exist_ok=True)
        link_or_copy(run.layout.synthetic / row["file"], out / file_name)
        metadata.append({"file_name": file_name, **{k: row[k] for k in ("label", "class_name", "prompt", "seed", "adapter")}})
    atomic.write_text(out / METADATA_FILE, "".join(json.dumps(m, ensure_ascii=False) + "\n" for m in metadata))
    atomic.write_json(out / CLASSES_FILE, {
        "labels": [c.label for c in run.manifest.classes],
        "class_names": [c.name for c in run.manifest.classes],
        "folders": [c.slug for c in run.manifest.classes],
        "prompts": [c.prompt for c in run.manifest.classes],
    })
