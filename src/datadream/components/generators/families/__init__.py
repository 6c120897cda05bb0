"""Generator families: what each text-to-image architecture needs to be adapted with LoRA and
sampled. Each family is one folder here: `__init__.py` (its `Family` record, with its counted
costs; torch-free), `model.py` (its `FamilyModel`), `testmodel.py` (its tiny and full-size random
models; part of the test-model wing, which no stage imports). This module collects the records
and reads a model's family.

A family is read from the model folder's `model_index.json` (`_class_name`, the diffusers
pipeline class), never guessed from a name. The LoRA targets are the defaults of diffusers'
official LoRA training scripts for that family (examples/dreambooth/train_dreambooth_lora*.py,
examples/text_to_image/train_text_to_image_lora*.py), so that adapters load with the stock
pipelines' `load_lora_weights`. docs/models.md ("Generator families") is the records in prose.
Torch-free: the CLI's pre-flight checks and the planner import it.
"""

from __future__ import annotations

import json
import pkgutil
from importlib import import_module
from pathlib import Path

from datadream.components.generators.families.record import Family
from datadream.errors import UserError


def _collect() -> dict[str, Family]:
    # Every subfolder is a family, found rather than listed: adding one is adding its folder.
    found = {}
    for module in pkgutil.iter_modules(__path__):
        if module.ispkg:
            family = import_module(f"{__name__}.{module.name}").FAMILY
            found[family.name] = family
    return found


FAMILIES: dict[str, Family] = _collect()
BY_PIPELINE = {family.pipeline: family for family in FAMILIES.values()}
# Settings that follow the generator's family unless the config sets them: the method's own
# (synthesize.guidance 2.0, 50 steps) were chosen for SD 2.1-base, and a model trained at 1024 px
# makes poor images at 512.
FAMILY_SETTINGS = ("adapt.resolution", "synthesize.resolution", "synthesize.steps", "synthesize.guidance")


def trained_settings(family: Family, native_resolution: int) -> dict[str, float | int]:
    """What the family's model was trained (and is usually sampled) with, for FAMILY_SETTINGS. SD
    keeps the method's guidance and steps: the method's values are SD's."""
    values: dict[str, float | int] = {"adapt.resolution": native_resolution,
                                      "synthesize.resolution": native_resolution}
    if family.name != "sd":
        values.update({"synthesize.steps": family.steps, "synthesize.guidance": family.guidance})
    return values


def native_resolution(model: str, family: Family) -> int:
    """The image size the generator was trained at: its denoiser's latent sample_size times the
    VAE's downsampling (SD 2.1-base 512, SD 2.1 768, SDXL 1024), read from the model's configs;
    the family's usual size where they do not say (FLUX has no sample_size) or cannot be read."""
    local = Path(model).expanduser()
    if local.is_file() or model.endswith((".safetensors", ".ckpt")):
        return family.resolution  # a single file's configs come from an SD folder (generator.config)
    denoiser, vae = _config_json(model, f"{family.denoiser}/config.json"), _config_json(model, "vae/config.json")
    sample = denoiser.get("sample_size") if denoiser else None
    if not isinstance(sample, int) or sample <= 0:
        return family.resolution
    blocks = (vae or {}).get("block_out_channels")
    scale = 2 ** (len(blocks) - 1) if isinstance(blocks, list) and blocks else 8
    return sample * scale


def _config_json(model: str, name: str) -> dict | None:
    from datadream.components.loading.hub import is_hub_id, offline_mode

    try:
        if is_hub_id(model):
            from huggingface_hub import hf_hub_download

            path = Path(hf_hub_download(model, name, local_files_only=offline_mode()))
        else:
            path = Path(model).expanduser() / name
        value = json.loads(path.read_text(encoding="utf-8"))
    except Exception:  # unreadable or not there: the caller falls back to the family's usual value
        return None
    return value if isinstance(value, dict) else None


def check_settings(family: Family, adapt_resolution: int, synthesize_resolution: int, sampler: str,
                   adapted: bool) -> None:
    """Settings a family cannot take, refused before any work rather than hours into a run."""
    if family.objective == "flow_matching":
        # 8x VAE downsampling, then 2x2 patches (SD 3) or 2x2 packing (FLUX).
        for key, value in (("adapt.resolution", adapt_resolution if adapted else 0),
                           ("synthesize.resolution", synthesize_resolution)):
            if value % 16:
                raise UserError(f"{key}={value}: {family.title} takes images whose sides are multiples of 16;"
                                f" use {value // 16 * 16 or 16} or {value // 16 * 16 + 16}")
        if sampler == "dpm++":
            raise UserError(f"synthesize.sampler=dpm++: {family.title} samples by flow matching with its own"
                            " Euler sampler; set synthesize.sampler=default")


def require_sd(family: Family, source: str) -> None:
    """A single-file checkpoint is read as SD 1.x/2.x: configs of another family would build the
    wrong pipeline (or fail deep inside diffusers)."""
    if family.name != "sd":
        raise UserError(f"generator.config: {source} is a model of the {family.title} family; single-file checkpoints"
                        " are read as SD 1.x/2.x only: set generator.model to a diffusers folder or hub id of that"
                        " model")


def family_named(class_name: str, model: str) -> Family:
    """The family of a pipeline class name, or one line listing the supported ones."""
    family = BY_PIPELINE.get(class_name)
    if family is None:
        known = ", ".join(f"{f.pipeline} ({f.name})" for f in FAMILIES.values())
        raise UserError(f"generator.model: {model} is a {class_name or 'unnamed'} model (model_index.json"
                        f" _class_name); datadream knows {known}")
    return family


def family_of(model: str) -> Family:
    """The family of `model`: a local diffusers folder or a hub id (its model_index.json, from
    the Hugging Face cache when offline), or a single-file checkpoint (always sd: its configs
    come from a Stable Diffusion folder)."""
    from datadream.components.loading.hub import is_hub_id

    local = Path(model).expanduser()
    if local.is_file() or model.endswith((".safetensors", ".ckpt", ".bin", ".pt", ".pth")):
        return FAMILIES["sd"]
    if is_hub_id(model):
        return family_from_index(_hub_index(model), model)
    return folder_family(local, model)


def folder_family(folder: Path, model: str) -> Family:
    """The family of the local diffusers folder `folder` (`model`: how the user named it, a hub id
    for a downloaded snapshot)."""
    path = folder / "model_index.json"
    if not path.is_file():
        raise UserError(f"generator.model: {folder} is not a diffusers folder (no model_index.json);"
                        " point it at a folder saved with save_pretrained, a .safetensors checkpoint or a hub id")
    return family_from_index(path.read_text(encoding="utf-8"), model)


def family_from_index(index: str, model: str) -> Family:
    """The family named by the text of a model_index.json."""
    try:
        class_name = json.loads(index).get("_class_name", "")
    except (json.JSONDecodeError, AttributeError):
        raise UserError(f"generator.model: {model}'s model_index.json is not a JSON object") from None
    return family_named(class_name, model)


def _hub_index(model: str) -> str:
    from huggingface_hub import hf_hub_download

    from datadream.components.loading.hub import explain, offline_mode

    try:
        return Path(hf_hub_download(model, "model_index.json", local_files_only=offline_mode())).read_text(
            encoding="utf-8")
    except Exception as err:  # hub errors come in many types; explain() sorts them into one line
        raise UserError(explain("diffusers", model, "generator.model", "diffusers", err)) from None
