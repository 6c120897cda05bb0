"""The record every generator family fills in (its folder's `__init__.py`), and the LoRA targets
several families share. Torch-free: the planner and the CLI's pre-flight checks read records."""

from __future__ import annotations

from dataclasses import dataclass, field

# The CLIP text encoders' attention projections: the same in every family that has CLIP.
CLIP_TEXT_TARGETS = ("q_proj", "k_proj", "v_proj", "out_proj")
UNET_TARGETS = ("to_q", "to_k", "to_v", "to_out.0")
# Both streams of every MMDiT joint-attention block (image: to_*, text: add_*).
MMDIT_ATTENTION_TARGETS = (
    "attn.to_q", "attn.to_k", "attn.to_v", "attn.to_out.0",
    "attn.add_q_proj", "attn.add_k_proj", "attn.add_v_proj", "attn.to_add_out",
)


@dataclass(frozen=True)
class TextEncoder:
    attribute: str  # the pipeline's component name (text_encoder, text_encoder_2, ...)
    kind: str  # "clip" or "t5"
    # T5-XXL (4.8 B parameters) stays frozen in every published recipe: LoRA there costs much
    # memory for little gain, and its embeddings can be computed once per prompt.
    lora: bool


@dataclass(frozen=True)
class Family:
    name: str  # also the name of the family's folder
    title: str  # how a person names it
    pipeline: str  # the diffusers pipeline class in model_index.json
    denoiser: str  # the pipeline attribute LoRA goes on: unet or transformer
    denoiser_targets: tuple[str, ...]
    text_encoders: tuple[TextEncoder, ...]
    # "epsilon or v_prediction": the scheduler config's prediction_type decides; "flow_matching":
    # the model predicts noise - data on the straight path x_t = (1 - t) x_0 + t noise.
    objective: str
    timestep_sampling: str  # how training draws t
    # Pixels per side the published weights were trained at; the costs below were counted there.
    resolution: int
    guidance: float  # the pipeline's usual guidance scale
    steps: int  # sampling steps the family is usually run with
    # The FamilyModel subclass in the family folder's model.py. Named, not imported: the record
    # stays torch-free, and family_model imports the class when a pipeline is loaded.
    model: str
    # Per sample at `resolution`, LoRA rank 16 on every published target, counted by
    # components/testmodels/families.py count_family_flops (torch's FlopCounterMode on the meta
    # device, through the very code adapt and synthesize run; `python benchmarks/cost_constants.py
    # --families` prints them, tests/test_costs.py counts again): one denoiser training step
    # (forward and backward, base frozen), one denoiser evaluation (a sampling step of one image;
    # classifier-free guidance evaluates two), one prompt through the trained CLIP encoders;
    # parameters of the denoiser, of every text encoder (T5 included) and of the LoRA. The meta
    # device counts attention, which the CPU kernels of the first count left out (SD 2.1's UNet:
    # 19% more than that count). Counted with torch 2.13.0, diffusers 0.42.1, transformers 5.23.0.
    # Read by datadream.costs.
    costs: dict[str, int] = field(compare=False)
    # Extra conditioning the denoiser takes besides the prompt embeddings.
    conditioning: str = ""

    @property
    def text_lora_targets(self) -> dict[str, tuple[str, ...]]:
        return {enc.attribute: CLIP_TEXT_TARGETS for enc in self.text_encoders if enc.lora}
