"""Render the example images (run once; the PNGs are committed). Plain shapes and text only."""

from pathlib import Path

from PIL import Image, ImageDraw, ImageFont

HERE = Path(__file__).parent / "images"


def podium() -> None:
    im = Image.new("RGB", (480, 320), (30, 60, 120))
    d = ImageDraw.Draw(im)
    d.rectangle([150, 170, 330, 320], fill=(200, 200, 210))  # the podium
    d.ellipse([205, 40, 275, 120], fill=(120, 90, 70))  # a head
    d.rectangle([195, 115, 285, 175], fill=(20, 20, 30))  # a suit
    font = ImageFont.load_default(size=34)
    d.rectangle([40, 200, 440, 260], fill=(255, 255, 255))
    d.text((60, 210), "OBAMA FOR AMERICA", fill=(0, 0, 0), font=font)
    im.save(HERE / "podium.png")


if __name__ == "__main__":
    HERE.mkdir(exist_ok=True)
    podium()
