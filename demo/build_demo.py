#!/usr/bin/env python3
"""Builds the demo catalogue of this folder from the CC0 consumer photos of
../shared/data/xdomain-dev/queries (Alexey Grigorev's clothing dataset, see LICENSE).

Deterministic: a seeded choice of photos per category, each re-encoded (width <= 300 px,
JPEG quality 85), numbered 1..N in (category, source path) order; one product per photo.
Writes photos/<id>.jpg, labels/retrieval_<category>.json (street2shop layout, with empty
train_pairs/test_pairs files) and products.csv (the columns of wtb_dataset::Catalog).

    python3 -m venv /tmp/demo-venv && /tmp/demo-venv/bin/pip install pillow
    /tmp/demo-venv/bin/python demo/build_demo.py [--shared ../shared]
"""
import argparse
import csv
import json
import random
from pathlib import Path

from PIL import Image

# Photos per category: about 300 in all, every category of the source with some.
QUOTAS = {"tops": 90, "pants": 60, "footwear": 45, "outerwear": 40, "dresses": 30,
          "skirts": 20, "hats": 15}
SEED = 2026
WIDTH = 300
QUALITY = 85
# A small palette for the colour word of each product's name.
PALETTE = {
    "Black": (25, 25, 25), "White": (240, 240, 240), "Grey": (140, 140, 140),
    "Dark grey": (75, 75, 75),
    "Red": (190, 30, 40), "Navy": (30, 40, 90), "Blue": (50, 100, 190),
    "Green": (50, 120, 60), "Olive": (110, 110, 50), "Yellow": (225, 200, 50),
    "Orange": (230, 120, 40), "Pink": (230, 150, 170), "Purple": (120, 60, 140),
    "Brown": (110, 70, 40), "Beige": (210, 190, 150),
}
ARTICLE = {"T-Shirt": "T-shirt", "Longsleeve": "Long-sleeve top", "Shirt": "Shirt",
           "Pants": "Trousers", "Shorts": "Shorts", "Dress": "Dress", "Skirt": "Skirt",
           "Outwear": "Jacket", "Shoes": "Shoes", "Hat": "Hat"}


def colour_name(image):
    """The palette colour most pixels of the photo's central region are nearest to (the
    garment usually fills the centre; a mean would blend it with the background)."""
    w, h = image.size
    centre = image.crop((w // 4, h // 4, 3 * w // 4, 3 * h // 4)).resize((24, 24))
    data = centre.tobytes()
    votes = {}
    for i in range(0, len(data), 3):
        pixel = data[i:i + 3]
        name = min(PALETTE, key=lambda n: sum((a - b) ** 2 for a, b in zip(PALETTE[n], pixel)))
        votes[name] = votes.get(name, 0) + 1
    return max(sorted(votes), key=lambda n: votes[n])


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--shared", default=str(Path(__file__).resolve().parents[2] / "shared"))
    args = parser.parse_args()
    source = Path(args.shared) / "data" / "xdomain-dev"
    out = Path(__file__).resolve().parent
    rows = list(csv.DictReader(open(source / "queries_meta.csv")))
    rng = random.Random(SEED)
    chosen = []
    for category, quota in QUOTAS.items():
        pool = sorted((r for r in rows if r["category"] == category), key=lambda r: r["path"])
        chosen += sorted(rng.sample(pool, min(quota, len(pool))), key=lambda r: r["path"])
    (out / "photos").mkdir(exist_ok=True)
    (out / "labels").mkdir(exist_ok=True)
    retrieval = {c: [] for c in QUOTAS}
    products = []
    for photo, row in enumerate(chosen, start=1):
        image = Image.open(source / row["path"]).convert("RGB")
        if image.width > WIDTH:
            image = image.resize((WIDTH, round(image.height * WIDTH / image.width)), Image.LANCZOS)
        image.save(out / "photos" / f"{photo}.jpg", quality=QUALITY, optimize=True)
        article = ARTICLE.get(row["source_label"], row["source_label"])
        colour = colour_name(image)
        retrieval[row["category"]].append({"photo": photo, "product": photo})
        products.append({"product": photo, "category": row["category"], "articleType": article,
                         "baseColour": colour, "gender": "", "name": f"{colour} {article.lower()}",
                         "source_image": row["source"]})
    for category, entries in retrieval.items():
        for kind, data in [("retrieval", entries), ("train_pairs", []), ("test_pairs", [])]:
            (out / "labels" / f"{kind}_{category}.json").write_text(json.dumps(data) + "\n")
    with open(out / "products.csv", "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(products[0]))
        writer.writeheader()
        writer.writerows(products)
    # The photos the demo does not hold, for tests of unseen real photos.
    held = sorted(r["path"] for r in rows if r not in chosen)
    (out / "unseen.txt").write_text("".join(f"{p}\n" for p in held))
    print(f"{len(chosen)} photos, {sum((out / 'photos' / f'{i}.jpg').stat().st_size for i in range(1, len(chosen) + 1)) / 1e6:.1f} MB")


if __name__ == "__main__":
    main()
