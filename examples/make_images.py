"""Render the example images (run once; the images are committed). Plain shapes and text only."""

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


def paris() -> None:
    """A 'painting' for the paris-painting example: a man carrying a woman in a boat, spears."""
    im = Image.new("RGB", (400, 280), (150, 120, 80))  # an old varnished sky
    d = ImageDraw.Draw(im)
    d.rectangle([0, 190, 400, 280], fill=(40, 70, 90))  # the sea
    d.polygon([(90, 185), (310, 185), (280, 225), (120, 225)], fill=(90, 50, 25))  # the boat
    d.ellipse([165, 80, 195, 110], fill=(210, 170, 130))  # his head
    d.rectangle([160, 110, 200, 185], fill=(150, 30, 30))  # his red cloak
    d.ellipse([200, 95, 226, 121], fill=(230, 190, 160))  # her head
    d.polygon([(198, 120), (240, 120), (250, 185), (195, 185)], fill=(230, 230, 240))  # her dress
    for x in (40, 60, 330, 355):  # soldiers with spears on the shore
        d.rectangle([x, 130, x + 12, 190], fill=(60, 60, 60))
        d.line([x + 6, 60, x + 6, 130], fill=(200, 200, 190), width=2)
    d.rectangle([6, 6, 393, 273], outline=(200, 160, 60), width=6)  # the frame
    im.save(HERE / "paris.jpg", quality=70)


if __name__ == "__main__":
    HERE.mkdir(exist_ok=True)
    podium()
    paris()
