"""The ten benchmark datasets of the DataDream paper: the one place that knows their domain
words, class counts and CoOp-protocol layouts. Split sizes are those of the CoOp protocol (Zhou
et al., "Learning to Prompt for Vision-Language Models", IJCV 2022, Table 1 / DATASETS.md)."""

from __future__ import annotations

from dataclasses import dataclass

from datadream.errors import UserError


@dataclass(frozen=True)
class CatalogEntry:
    key: str
    title: str
    domain: str  # with its trailing space, as used in "a {domain}photo of a {class}"
    classes: int
    split_file: str | None  # the CoOp split file's usual name, when the protocol ships one
    sizes: dict[str, int]  # expected images per split under the CoOp protocol
    layout: str  # what `data.*` should point at


CATALOG: dict[str, CatalogEntry] = {e.key: e for e in (
    CatalogEntry("imagenet", "ImageNet-1k", "", 1000, None,
                 {"train": 1281167, "test": 50000},
                 "data.root with train/ and test/ (the official val set) folders of wnid class folders;"
                 " prompted with the published names (sorted wnid order)"),
    CatalogEntry("caltech101", "Caltech101", "", 100, "split_zhou_Caltech101.json",
                 {"train": 4128, "val": 1649, "test": 2465},
                 "data.root = caltech-101/101_ObjectCategories, data.split_file = split_zhou_Caltech101.json"),
    CatalogEntry("dtd", "Describable Textures (DTD)", "texture ", 47, "split_zhou_DescribableTextures.json",
                 {"train": 2820, "val": 1128, "test": 1692},
                 "data.root = dtd/images, data.split_file = split_zhou_DescribableTextures.json"),
    CatalogEntry("eurosat", "EuroSAT (RGB)", "satellite ", 10, "split_zhou_EuroSAT.json",
                 {"train": 13500, "val": 5400, "test": 8100},
                 "data.root = eurosat/2750, data.split_file = split_zhou_EuroSAT.json"),
    CatalogEntry("fgvc_aircraft", "FGVC-Aircraft (variants)", "aircraft ", 100, None,
                 {"train": 3334, "val": 3333, "test": 3333},
                 "data.root = fgvc-aircraft-2013b/data/images and a CSV split file built from"
                 " images_variant_{train,val,test}.txt (see docs/datasets.md)"),
    CatalogEntry("pets", "Oxford-IIIT Pets", "pet ", 37, "split_zhou_OxfordPets.json",
                 {"train": 2944, "val": 736, "test": 3669},
                 "data.root = oxford_pets/images, data.split_file = split_zhou_OxfordPets.json"),
    CatalogEntry("cars", "Stanford Cars", "car ", 196, "split_zhou_StanfordCars.json",
                 {"train": 6509, "val": 1635, "test": 8041},
                 "data.root = stanford_cars, data.split_file = split_zhou_StanfordCars.json"),
    CatalogEntry("sun397", "SUN397", "scene ", 397, "split_zhou_SUN397.json",
                 {"train": 15880, "val": 3970, "test": 19850},
                 "data.root = sun397/SUN397, data.split_file = split_zhou_SUN397.json"),
    CatalogEntry("food101", "Food-101", "food ", 101, "split_zhou_Food101.json",
                 {"train": 50500, "val": 20200, "test": 30300},
                 "data.root = food-101/images, data.split_file = split_zhou_Food101.json"),
    CatalogEntry("flowers102", "Oxford Flowers-102", "flower ", 102, "split_zhou_OxfordFlowers.json",
                 {"train": 4093, "val": 1633, "test": 2463},
                 "data.root = oxford_flowers/jpg, data.split_file = split_zhou_OxfordFlowers.json"),
)}


def get_entry(key: str) -> CatalogEntry:
    try:
        return CATALOG[key]
    except KeyError:
        raise UserError(f"data.dataset: unknown dataset '{key}'; known: {', '.join(CATALOG)}") from None
