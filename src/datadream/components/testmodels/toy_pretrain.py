"""A tiny Stable Diffusion that has seen the toy world, trained here in code in a few CPU minutes.

A tiny random-weight generator samples noise, so with it nothing can show that adaptation learns
anything. This one is pretrained on toy images (toy_world.py: every shape in every colour) with
captions that often name the colour and never the shape. So it draws toy images and knows "a red
thing", but has never seen the word "circle": what a class looks like only adaptation to its shots
can tell it, which is what the learning test and the demo measure. It stands in for a real checkpoint's
prior; it says nothing about how far adaptation moves a real model on real photographs.

The package ships the folder this recipe built (resources/toy-generator, 1.7 MB), so the demo starts
at once and every machine samples from the same weights (a build on another CPU can differ in the
last bits). A changed recipe is built once and cached instead (toy_generator: in $DATADREAM_CACHE,
else ~/.cache/datadream), in a folder named after the recipe and reused as is.
"""

from __future__ import annotations

import json
import logging
import os
import random
import shutil
import time
from pathlib import Path

import numpy as np
import torch

from datadream import atomic
from datadream.components.testmodels.tiny import TINY_RESOLUTION, build_tiny_stable_diffusion, mark_tiny_model
from datadream.components.testmodels.toy_world import TOY_CLASSES, draw_shape
from datadream.config import stable_hash

log = logging.getLogger(__name__)

# Everything the weights depend on: a change here rebuilds a cached folder. A change to the code
# below (the captions, the losses) must bump `version`, or old caches would be reused.
RECIPE = {
    "version": 1,
    "images": 3072,
    "vae_steps": 300,
    "unet_steps": 1500,
    "batch_size": 32,
    "lr": 2e-3,
    "offset_noise": 0.2,
    "seed": 0,
}
RECIPE_FILE = "datadream-toy-pretraining.json"
# Caption nouns, drawn independently of the image: none names a shape.
NOUNS = ("thing", "object", "item", "picture", "figure", "pattern", "toy")
COLOURS = ("red", "orange", "yellow", "green", "cyan", "blue", "purple", "pink")
NAMED_COLOUR_SHARE = 0.7


def colour_name(hue: float) -> str:
    return COLOURS[round(hue * len(COLOURS)) % len(COLOURS)]


def toy_world(count: int, seed: int) -> tuple[torch.Tensor, list[str]]:
    """`count` toy images of any shape and hue, as a float tensor in [-1, 1], and their captions."""
    rng = random.Random(seed)
    images, captions = [], []
    for _ in range(count):
        hue = rng.random()
        images.append(np.asarray(draw_shape(rng.choice(TOY_CLASSES), TINY_RESOLUTION, rng, hue=hue)))
        colour = f"{colour_name(hue)} " if rng.random() < NAMED_COLOUR_SHARE else ""
        captions.append(f"a photo of a {colour}{rng.choice(NOUNS)}")  # as the run's prompt template
    return torch.from_numpy(np.stack(images)).permute(0, 3, 1, 2).float() / 127.5 - 1, captions


TOY_NOTE = ("a tiny generator pretrained for a few CPU minutes on toy shapes drawn by code (datadream's demo"
            " and tests): what it makes shows that adaptation learns, not how good a real model is")


def cache_root() -> Path:
    return Path(os.environ.get("DATADREAM_CACHE") or Path.home() / ".cache" / "datadream")


SHIPPED = Path(__file__).resolve().parents[2] / "resources" / "toy-generator"


def toy_generator() -> Path:
    """The pretrained tiny generator's folder: the shipped one where it was built by this recipe,
    else built on the first call (a few CPU minutes)."""
    if is_built(SHIPPED):
        return SHIPPED
    return build_pretrained_tiny_stable_diffusion(cache_root() / f"toy-generator-{stable_hash(RECIPE)}")


def is_built(folder: Path) -> bool:
    recipe_path = Path(folder) / RECIPE_FILE
    return recipe_path.is_file() and json.loads(recipe_path.read_text()) == RECIPE


def build_pretrained_tiny_stable_diffusion(folder: Path) -> Path:
    """The tiny generator of tiny.py, pretrained on the toy world (cached in `folder`)."""
    folder = Path(folder)
    if is_built(folder):
        return folder
    started = time.time()
    print(f"pretraining the tiny generator on toy images, once (a few CPU minutes; kept in {folder})", flush=True)
    # A process of its own: two builders (two test sessions, a demo beside them) never mix files.
    staging = folder.with_name(f"{folder.name}.building-{os.getpid()}")
    shutil.rmtree(staging, ignore_errors=True)
    build_tiny_stable_diffusion(staging, seed=RECIPE["seed"])
    from diffusers import StableDiffusionPipeline

    pipeline = StableDiffusionPipeline.from_pretrained(staging, safety_checker=None)
    images, captions = toy_world(RECIPE["images"], RECIPE["seed"])
    generator = torch.Generator().manual_seed(RECIPE["seed"])
    _train_vae(pipeline.vae, images, generator)
    _train_unet(pipeline, images, captions, generator)
    pipeline.save_pretrained(staging)
    mark_tiny_model(staging, TOY_NOTE)
    atomic.write_json(staging / RECIPE_FILE, RECIPE)  # last: a folder with it is complete
    if is_built(folder):  # another process finished first
        shutil.rmtree(staging)
        return folder
    shutil.rmtree(folder, ignore_errors=True)  # a stale recipe's or a killed build's leftovers
    staging.rename(folder)
    log.info("pretrained the tiny generator on toy images in %.0fs", time.time() - started)
    return folder


def _batches(images: torch.Tensor, steps: int, generator: torch.Generator):
    for _ in range(steps):
        yield images[torch.randint(len(images), (RECIPE["batch_size"],), generator=generator)]


def _train_vae(vae, images: torch.Tensor, generator: torch.Generator) -> None:
    vae.train()
    optimizer = torch.optim.AdamW(vae.parameters(), lr=RECIPE["lr"])
    for batch in _batches(images, RECIPE["vae_steps"], generator):
        posterior = vae.encode(batch).latent_dist
        reconstruction = vae.decode(posterior.sample(generator)).sample
        # SD's VAE has a nearly deterministic encoder (posterior std far below the latents' spread),
        # which the adapt stage relies on when it samples latents: a tiny KL weight keeps it so.
        loss = torch.nn.functional.mse_loss(reconstruction, batch) + 1e-7 * posterior.kl().mean()
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    vae.eval()
    with torch.no_grad():
        latents = vae.encode(images[:512]).latent_dist.sample(generator)
    # As SD's 0.18215: the factor that gives the diffusion model unit-variance latents.
    vae.register_to_config(scaling_factor=float(1 / latents.std()))
    vae.requires_grad_(False)


def _train_unet(pipeline, images: torch.Tensor, captions: list[str], generator: torch.Generator) -> None:
    unet, vae, scheduler = pipeline.unet, pipeline.vae, pipeline.scheduler
    with torch.no_grad():
        latents = torch.cat([vae.encode(chunk).latent_dist.sample(generator) for chunk in images.split(256)])
        latents = latents * vae.config.scaling_factor
    distinct = sorted(set(captions)) + [""]  # "" for classifier-free guidance's unconditional pass
    tokens = pipeline.tokenizer(distinct, padding="max_length", max_length=pipeline.tokenizer.model_max_length,
                                truncation=True, return_tensors="pt").input_ids
    caption_of = torch.tensor([distinct.index(c) for c in captions])
    text_encoder = pipeline.text_encoder
    # The text encoder learns with the UNet: a random one barely tells "red" from "blue".
    unet.train()
    text_encoder.train()
    optimizer = torch.optim.AdamW([*unet.parameters(), *text_encoder.parameters()], lr=RECIPE["lr"])
    schedule = torch.optim.lr_scheduler.OneCycleLR(optimizer, RECIPE["lr"], total_steps=RECIPE["unet_steps"],
                                                   pct_start=0.1)
    batch_size = RECIPE["batch_size"]
    for step in range(RECIPE["unet_steps"]):
        chosen = torch.randint(len(latents), (batch_size,), generator=generator)
        clean = latents[chosen]
        noise = torch.randn(clean.shape, generator=generator)
        # Offset noise: with a per-image, per-channel shift in the noise, the model cannot read an
        # image's overall colour off the starting noise, so it learns to take it from the caption
        # (and, once adapted, from the class).
        noise = noise + RECIPE["offset_noise"] * torch.randn((*clean.shape[:2], 1, 1), generator=generator)
        timesteps = torch.randint(scheduler.config.num_train_timesteps, (batch_size,), generator=generator)
        noisy = scheduler.add_noise(clean, noise, timesteps)
        # Caption dropout, as in SD's training, so that the unconditional pass means something.
        dropped = torch.rand(batch_size, generator=generator) < 0.1
        context = text_encoder(tokens[torch.where(dropped, len(distinct) - 1, caption_of[chosen])])[0]
        loss = torch.nn.functional.mse_loss(unet(noisy, timesteps, context).sample, noise)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        schedule.step()
        if step % 250 == 0:
            log.info("toy pretraining: step %d loss %.4f", step, loss.item())
    for module in (unet, text_encoder):
        module.eval()
        module.requires_grad_(False)
