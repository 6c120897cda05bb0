"""`datadream inspect RUN`: do the synthetic images look like the classes, and are they diverse?

Per class and over all classes, in the feature space of the run's classifier backbone (the frozen
CLIP image tower of `classifier.model`: nothing extra is downloaded), the synthetic images are set
against the real shots (components/measures/quality.py: Fréchet distance and kernel distance, each with its
bootstrap spread, precision / recall / density / coverage, diversity of each set, near-copies of shots,
CLIP-score against the class prompt), and, when the dataset has a validation split, against those
held-out real images too: the shots are what the generator was adapted to, the held-out images
say whether it learned the class or the shots. Numbers go to RUN/inspect.json with what each
means. `run` inspects after the synthetic set is complete (a unit like any other).

Features are computed once per image and cached (RUN/.cache/, keyed by the image's sha256, or by
path, size and time for split images that have no recorded hash), so a second inspect, or one
after more classes were generated, reads them back.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

import torch

from datadream import atomic, locks
from datadream.artifacts import completed_synthetic_set
from datadream.components.classifiers.backbones import Classifier, load_pretrained
from datadream.components.classifiers.augment import normalize
from datadream.components.classifiers.scoring import loader_workers, start_loader
from datadream.components.loading.models import resolve_device, resolve_dtype
from datadream.components.measures import quality
from datadream.config import stable_hash
from datadream.data.labelled import EvalImages
from datadream.data.samples import Sample, real_shots, split_samples
from datadream.markers import read_marker
from datadream.progress import progress
from datadream.runs import Run, open_run
from datadream.units import inspect_fingerprint

log = logging.getLogger(__name__)

MEANING = {
    "fd": "Fréchet distance between Gaussians fitted to the real and the synthetic features; 0 = same mean and"
          " covariance, lower is closer. Unstable with few shots: read it with fd_std (bootstrap spread).",
    "kd": "kernel distance: unbiased MMD² with the kernel (cosine + 1)³, i.e. do the synthetic images share the real"
          " ones' mean, spread and skew; about 0 (within kd_std) when both come from one distribution, lower is closer."
          " Unbiased at any sample size; kd_std is its bootstrap error bar at these sizes.",
    "precision": "share of synthetic images inside the real images' k-NN manifold (realism); higher is better.",
    "recall": "share of real images inside the synthetic images' k-NN manifold (coverage of the class); higher is"
              " better.",
    "density": "how many real neighbourhoods a synthetic image falls in, on average, over k; about 1 for matching"
               " sets.",
    "coverage": "share of real images with a synthetic image in their k-NN neighbourhood; higher is better.",
    "diversity_real / diversity_synth": "mean pairwise cosine distance within the set; synthetic far below real"
                                        " means the generator repeats itself.",
    "near_copy_share": "share of synthetic images closer to a shot than the two closest shots are to each other;"
                       " compare with near_copy_expected_share, what fresh samples of the class would give"
                       " (2/(n+1) for n shots); far above it means the generator copies its shots.",
    "clip_score_real / clip_score_synth": "100 x max(cosine, 0) between an image and its class prompt, in the"
                                          " classifier's CLIP space; synthetic below real means off-prompt images.",
}
COMPARABLE = ("Comparable between runs of the same dataset, shots and classifier.model (the feature space): another"
              " backbone, another number of shots or of synthetic images per class changes every figure; FD also"
              " depends on the sample sizes (its bias grows as they shrink), so compare it only at equal sizes. FD and"
              " the kernel distance are computed in the classifier's own L2-normalised feature space and are not"
              " comparable with published FID or KID values (clean-fid uses un-normalised Inception or CLIP"
              " ViT-B/32 features).")


def inspect(run_dir: Path) -> dict:
    run = open_run(run_dir)
    with locks.unit_lock(run.layout.lock("inspect"), f"the inspection of {run.layout.root}",
                         run.config.runtime.wait_for_locks):
        fingerprint = inspect_fingerprint(run)
        recorded = read_marker(run.layout.inspect)
        if recorded and recorded.get("fingerprint") == fingerprint:
            log.info("inspect: figures already computed for this synthetic set")
            return recorded
        synthetic, _ = completed_synthetic_set(run)
        shots = real_shots(run.manifest)
        heldout = split_samples(run.config.data, run.manifest, "val")
        features = FeatureCache(run).features(shots + synthetic + heldout)
        names = [c.name for c in run.manifest.classes]
        groups = {"shots": shots, "synthetic": synthetic, "heldout": heldout}
        by_class: dict[str, dict[str, torch.Tensor]] = {}
        start = 0
        for kind, samples in groups.items():
            rows = features[start:start + len(samples)]
            start += len(samples)
            labels = torch.tensor([s.label for s in samples], dtype=torch.long)
            by_class[kind] = {name: rows[labels == label] for label, name in enumerate(names)}
        text = dict(zip(names, prompt_features(run)))
        seed = run.config.runtime.seed
        result = {
            "fingerprint": fingerprint,
            "feature_space": f"CLIP image tower of {run.config.classifier.model} (frozen)",
            "meaning": MEANING,
            "comparable": COMPARABLE,
            "against_shots": quality.summarise_classes(by_class["shots"], by_class["synthetic"], text, seed=seed),
        }
        with_heldout = [n for n in names if len(by_class["heldout"][n])]
        if with_heldout:
            result["against_heldout"] = quality.summarise_classes(
                {n: by_class["heldout"][n] for n in with_heldout}, {n: by_class["synthetic"][n] for n in with_heldout},
                {n: text[n] for n in with_heldout}, seed=seed)
        result["overall"] = result["against_shots"]["overall"]
        atomic.write_json(run.layout.inspect, result)
    overall = result["overall"]
    log.info("inspect: %d classes; mean FD %s, precision %s, recall %s, near-copies %s (fresh samples: %s)",
             overall["n_classes"], overall.get("fd"), overall.get("precision"), overall.get("recall"),
             overall.get("near_copy_share"), overall.get("near_copy_expected_share"))
    return result


def _device(run: Run) -> tuple[torch.device, torch.dtype]:
    device = resolve_device(run.config.runtime.device)
    return device, resolve_dtype(run.config.runtime.precision, device)


def prompt_features(run: Run) -> torch.Tensor:
    classifier = FeatureCache.classifier(run)
    device, _ = _device(run)
    tokens = classifier.tokenize([c.prompt for c in run.manifest.classes], device)
    with torch.no_grad():
        return classifier.text_features(tokens).cpu()


class FeatureCache:
    """Image features of the run's CLIP, one row per image, kept in RUN/.cache/ between calls."""

    _loaded: dict[str, Classifier] = {}

    def __init__(self, run: Run):
        self.run = run
        name = stable_hash([run.config.classifier.model, run.config.runtime.precision])
        self.path = run.layout.root / ".cache" / f"features-{name}.safetensors"

    @classmethod
    def classifier(cls, run: Run) -> Classifier:
        key = run.config.classifier.model
        if key not in cls._loaded:
            cls._loaded.clear()
            device, _ = _device(run)
            cls._loaded[key] = load_pretrained(key).to(device)
            cls._loaded[key].model.eval()
        return cls._loaded[key]

    @staticmethod
    def key(sample: Sample) -> str:
        if sample.sha256:
            return sample.sha256
        stat = os.stat(sample.path)
        return stable_hash([sample.path, stat.st_size, stat.st_mtime_ns])

    def features(self, samples: list[Sample]) -> torch.Tensor:
        cached = self._read()
        keys = [self.key(s) for s in samples]
        missing = [s for s, k in zip(samples, keys) if k not in cached]
        if missing:
            fresh = self._compute(missing)
            cached.update({self.key(s): row for s, row in zip(missing, fresh)})
            self._write(cached)
        return torch.stack([cached[k] for k in keys]) if keys else torch.zeros(0)

    def _compute(self, samples: list[Sample]) -> list[torch.Tensor]:
        classifier = self.classifier(self.run)
        device, dtype = _device(self.run)
        cfg = self.run.config.classifier
        loader = torch.utils.data.DataLoader(EvalImages(samples, classifier.image_size), batch_size=cfg.eval_batch_size,
                                             num_workers=loader_workers(cfg.workers), pin_memory=device.type == "cuda")
        rows = []
        with torch.no_grad(), torch.autocast(device.type, dtype=dtype, enabled=dtype != torch.float32):
            for pixels, _ in progress(start_loader(loader), len(loader), desc="inspect features", unit="batch",
                                      leave=False):
                pixels = normalize(pixels.to(device), *classifier.normalisation)
                rows += list(classifier.image_features(pixels).float().cpu())
        return rows

    def _read(self) -> dict[str, torch.Tensor]:
        """The cached rows; a damaged cache is dropped (it is only a cache)."""
        from safetensors import safe_open

        try:
            with safe_open(str(self.path), "pt") as handle:
                keys = (handle.metadata() or {}).get("keys", "").split(",")
                rows = handle.get_tensor("features")
        except Exception:  # missing, or cut short by a kill: computed again
            return {}
        return dict(zip(keys, rows)) if len(keys) == len(rows) else {}

    def _write(self, features: dict[str, torch.Tensor]) -> None:
        from safetensors.torch import save

        keys = sorted(features)
        data = save({"features": torch.stack([features[k] for k in keys]).contiguous()}, metadata={"keys": ",".join(keys)})
        atomic.write_bytes(self.path, data)
