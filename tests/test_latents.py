import torch

from datadream.components.generators.latents import LatentEncoder, ShotImage


def load_vae(tiny_models):
    from diffusers import AutoencoderKL

    return AutoencoderKL.from_pretrained(tiny_models["sd"], subfolder="vae").eval()


def test_exact_reuse_matches_encoding_the_crop(tiny_models):
    vae = load_vae(tiny_models)
    torch.manual_seed(0)
    square = ShotImage(torch.randint(0, 256, (3, 32, 32), dtype=torch.uint8), 0, "square")
    wide = ShotImage(torch.randint(0, 256, (3, 32, 48), dtype=torch.uint8), 0, "wide")
    crops = torch.stack([square.pixels, wide.pixels[:, :, 8:40]])
    reuse = LatentEncoder(vae, 32, reuse_exact=True, approximate=False)
    plain = LatentEncoder(vae, 32, reuse_exact=False, approximate=False)
    for _ in range(2):  # the second call is served from the cache for the square image
        mean, std = reuse.moments([square, wide], [(0, 0), (0, 8)], crops)
    reference_mean, reference_std = plain.moments([square, wide], [(0, 0), (0, 8)], crops)
    assert list(reuse._cache) == ["square"] and not plain._cache
    assert torch.allclose(mean, reference_mean, atol=1e-5) and torch.allclose(std, reference_std, atol=1e-5)


def test_cache_latents_crops_on_the_latent_grid(tiny_models):
    vae = load_vae(tiny_models)
    wide = ShotImage(torch.randint(0, 256, (3, 32, 48), dtype=torch.uint8), 0, "wide")
    approximate = LatentEncoder(vae, 32, reuse_exact=True, approximate=True)
    mean, std = approximate.moments([wide], [(0, 9)], wide.pixels[:, :, 9:41].unsqueeze(0))
    full_mean, _ = approximate._cache["wide"]
    assert mean.shape == (1, 4, 16, 16) and full_mean.shape == (4, 16, 24)
    assert torch.equal(mean[0], full_mean[:, :, 4:20])  # left 9 -> latent column 4 (factor 2)


def test_random_sd21_base_has_the_published_architecture():
    """Built on the meta device: shapes only, no memory."""
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel

    from datadream.components.generators.families.sd.testmodel import SD21_BASE_TEXT, SD21_BASE_UNET
    from datadream.components.testmodels.parts import SD21_BASE_VAE

    with torch.device("meta"):
        unet = UNet2DConditionModel(**SD21_BASE_UNET)
        vae = AutoencoderKL(**SD21_BASE_VAE)
        text = CLIPTextModel(CLIPTextConfig(vocab_size=49408, **SD21_BASE_TEXT))
    count = lambda m: sum(p.numel() for p in m.parameters())  # noqa: E731
    assert 865e6 < count(unet) < 866e6
    assert 83e6 < count(vae) < 84e6
    assert 340e6 < count(text) < 341e6
