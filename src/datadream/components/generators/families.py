"""Generator families: what each text-to-image architecture needs to be adapted with LoRA and
sampled, kept in one place.

A family is read from the model folder's `model_index.json` (`_class_name`, the diffusers
pipeline class), never guessed from a name. The LoRA targets are the defaults of diffusers'
official LoRA training scripts for that family (examples/dreambooth/train_dreambooth_lora*.py,
examples/text_to_image/train_text_to_image_lora*.py), so that adapters load with the stock
pipelines' `load_lora_weights`. docs/models.md ("Generator families") is this table in prose.
Torch-free: the CLI's pre-flight checks import it.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from datadream.errors import UserError

# The CLIP text encoders' attention projections: the same in every family that has CLIP.
CLIP_TEXT_TARGETS = ("q_proj", "k_proj", "v_proj", "out_proj")
UNET_TARGETS = ("to_q", "to_k", "to_v", "to_out.0")
# Both streams of every MMDiT joint-attention block (image: to_*, text: add_*).
MMDIT_ATTENTION_TARGETS = (
    "attn.to_q", "attn.to_k", "attn.to_v", "attn.to_out.0",
    "attn.add_q_proj", "attn.add_k_proj", "attn.add_v_proj", "attn.to_add_out",
)
FLUX_FEED_FORWARD_TARGETS = ("ff.net.0.proj", "ff.net.2", "ff_context.net.0.proj", "ff_context.net.2")


@dataclass(frozen=True)
class TextEncoder:
    attribute: str  # the pipeline's component name (text_encoder, text_encoder_2, ...)
    kind: str  # "clip" or "t5"
    # T5-XXL (4.8 B parameters) stays frozen in every published recipe: LoRA there costs much
    # memory for little gain, and its embeddings can be computed once per prompt.
    lora: bool


@dataclass(frozen=True)
class Family:
    name: str
    title: str  # how a person names it
    pipeline: str  # the diffusers pipeline class in model_index.json
    denoiser: str  # the pipeline attribute LoRA goes on: unet or transformer
    denoiser_targets: tuple[str, ...]
    text_encoders: tuple[TextEncoder, ...]
    # "epsilon or v_prediction": the scheduler config's prediction_type decides; "flow_matching":
    # the model predicts noise - data on the straight path x_t = (1 - t) x_0 + t noise.
    objective: str
    timestep_sampling: str  # how training draws t
    resolution: int  # pixels per side the published weights were trained at
    guidance: float  # the pipeline's usual guidance scale
    steps: int  # sampling steps the family is usually run with
    # Extra conditioning the denoiser takes besides the prompt embeddings.
    conditioning: str = ""

    @property
    def text_lora_targets(self) -> dict[str, tuple[str, ...]]:
        return {enc.attribute: CLIP_TEXT_TARGETS for enc in self.text_encoders if enc.lora}


FAMILIES: dict[str, Family] = {
    family.name: family
    for family in (
        Family(
            name="sd", title="SD 1.x/2.x", pipeline="StableDiffusionPipeline", denoiser="unet",
            denoiser_targets=UNET_TARGETS,
            text_encoders=(TextEncoder("text_encoder", "clip", True),),
            objective="epsilon or v_prediction", timestep_sampling="uniform over the 1000 DDPM steps",
            resolution=512, guidance=7.5, steps=50,
        ),
        Family(
            name="sdxl", title="SDXL", pipeline="StableDiffusionXLPipeline", denoiser="unet",
            denoiser_targets=UNET_TARGETS,
            text_encoders=(TextEncoder("text_encoder", "clip", True), TextEncoder("text_encoder_2", "clip", True)),
            objective="epsilon or v_prediction", timestep_sampling="uniform over the 1000 DDPM steps",
            resolution=1024, guidance=5.0, steps=50,
            conditioning="pooled text embeddings and add_time_ids (original size, crop top-left, target size)",
        ),
        Family(
            name="sd3", title="SD 3/3.5", pipeline="StableDiffusion3Pipeline", denoiser="transformer",
            denoiser_targets=MMDIT_ATTENTION_TARGETS,
            text_encoders=(TextEncoder("text_encoder", "clip", True), TextEncoder("text_encoder_2", "clip", True),
                           TextEncoder("text_encoder_3", "t5", False)),
            objective="flow_matching",
            # The SD3 paper's rf/lognorm(0.00, 1.00): t = sigmoid(n), n ~ N(0, 1); the default of
            # diffusers' train_dreambooth_lora_sd3.py (weighting_scheme=logit_normal), which also
            # draws it on the scheduler's shifted schedule.
            timestep_sampling="logit-normal (mean 0, std 1), shifted by the scheduler's shift",
            resolution=1024, guidance=7.0, steps=28,
            conditioning="pooled text embeddings of both CLIP encoders",
        ),
        Family(
            name="flux", title="FLUX.1", pipeline="FluxPipeline", denoiser="transformer",
            denoiser_targets=MMDIT_ATTENTION_TARGETS + FLUX_FEED_FORWARD_TARGETS,
            text_encoders=(TextEncoder("text_encoder", "clip", True), TextEncoder("text_encoder_2", "t5", False)),
            objective="flow_matching",
            # FLUX.1-dev samples with sigmas shifted towards noise by a resolution-dependent mu
            # (scheduler use_dynamic_shifting, base_shift/max_shift), schnell unshifted; training
            # draws t the same way: a sigmoid of a normal, shifted as the scheduler shifts.
            timestep_sampling="logit-normal, shifted as the scheduler config says (dev: the resolution-dependent mu)",
            resolution=1024, guidance=3.5, steps=28,
            conditioning="pooled CLIP embedding, packed 2x2 latents with position ids, embedded guidance (dev)",
        ),
    )
}
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
