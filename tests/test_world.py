"""The demo world: determinism, range independence, captions agree with factors, bank tags."""

import numpy as np
import pytest

from engine.sources import world

pytestmark = pytest.mark.unit


def test_generate_shapes_and_dtypes():
    b = world.generate(3, 11, seed=5)
    assert b.images.shape == (8, world.IMAGE_SIZE, world.IMAGE_SIZE, 3)
    assert b.images.dtype == np.uint8
    assert b.codes.shape == (8, len(world.FACTORS))
    assert b.codes.dtype == np.int16
    assert len(b.captions) == 8 == len(b)
    for k, values in enumerate(world.FACTORS.values()):
        assert b.codes[:, k].min() >= 0 and b.codes[:, k].max() < len(values)


def test_generate_is_deterministic_and_range_independent():
    whole = world.generate(0, 10, seed=7)
    again = world.generate(0, 10, seed=7)
    a, b = world.generate(0, 5, seed=7), world.generate(5, 10, seed=7)
    np.testing.assert_array_equal(whole.images, again.images)
    np.testing.assert_array_equal(whole.images, np.concatenate([a.images, b.images]))
    np.testing.assert_array_equal(whole.codes, np.concatenate([a.codes, b.codes]))
    assert whole.captions == a.captions + b.captions
    single = world.generate(7, 8, seed=7)
    np.testing.assert_array_equal(single.images[0], whole.images[7])
    other = world.generate(0, 10, seed=8)
    assert not np.array_equal(other.images, whole.images)


def test_sample_codes_matches_generate_and_covers_values():
    b = world.generate(0, 400, seed=1)
    for i in (0, 17, 399):
        np.testing.assert_array_equal(world.sample_codes(i, seed=1), b.codes[i])
    for k, values in enumerate(world.FACTORS.values()):
        assert set(b.codes[:, k].tolist()) == set(range(len(values)))


def test_captions_agree_with_factors():
    b = world.generate(0, 300, seed=2)
    named_counts = dict.fromkeys(world.FACTORS, 0)
    for codes, text in zip(b.codes, b.captions, strict=True):
        named = world.parse_caption(text)
        assert len(named) >= 2, text
        for f, code in named.items():
            assert code == codes[world.FACTOR_NAMES.index(f)], (text, f)
            named_counts[f] += 1
    assert all(n > 0 for n in named_counts.values()), named_counts
    assert len(set(b.captions)) > 100  # varied templates and subsets


def test_render_reflects_codes():
    """Colour and background are visible in the pixels; position moves the object."""
    pos = world.FACTORS["position"]
    codes = {"shape": 1, "colour": 0, "position": pos.index("top left"), "texture": 0, "size": 1}
    codes["background"] = world.FACTORS["background"].index("black")
    img = world.render_image(codes, seed=0).astype(float)
    q = world.IMAGE_SIZE // 4  # centre of the top-left quadrant
    assert img[q, q, 0] > 180 and img[q, q, 1] < 90  # red object in the top left
    assert img[3 * q, 3 * q].max() < 60  # black background elsewhere
    img_br = world.render_image(dict(codes, position=pos.index("bottom right")), 0).astype(float)
    assert img_br[q, q].max() < 60 and img_br[3 * q, 3 * q, 0] > 180
    small = world.render_image(dict(codes, size=0), 0)
    assert (small[..., 0] > 180).sum() < (img[..., 0] > 180).sum()
    # dict and sequence codes render the same
    seq = [codes[f] for f in world.FACTORS]
    np.testing.assert_array_equal(world.render_image(seq, seed=3), world.render_image(codes, 3))


def test_bad_codes_and_ranges_fail_clearly():
    with pytest.raises(ValueError, match="out of range"):
        world.render_image([9, 0, 0, 0, 0, 0], seed=0)
    with pytest.raises(ValueError, match="factor codes"):
        world.render_image([0, 0], seed=0)
    with pytest.raises(ValueError, match="bad image range"):
        world.generate(5, 2)
    with pytest.raises(ValueError, match="not a world caption"):
        world.parse_caption("a photo of a dog")


def test_description_bank_tags_are_valid_and_parse_back():
    bank = world.description_bank()
    assert 150 <= len(bank) <= 600
    texts = [t for t, _ in bank]
    assert len(set(texts)) == len(texts)
    tags = {tag for _, tag in bank}
    assert tags == set(world.FACTORS) | {"distractor"}
    for text, tag in bank:
        if tag == "distractor":
            with pytest.raises(ValueError):
                world.parse_caption(text)
            continue
        try:
            named = world.parse_caption(text)
        except ValueError:
            # short forms ("a red shape", "something red", "a navy background") use caption words
            words = set(text.replace(".", "").split())
            values = world.FACTORS[tag]
            assert any(set(v.split()) <= words for v in values), text
            continue
        assert set(named) == {tag}, (text, named)


def test_value_texts_cover_every_value():
    for f, values in world.FACTORS.items():
        texts = world.value_texts(f)
        assert len(texts) == len(values)
        for code, group in enumerate(texts):
            for t in group:
                assert world.parse_caption(t) == {f: code}


@pytest.mark.unit
def test_masks_are_the_object_and_leave_images_unchanged():
    plain = world.generate(0, 12, seed=3)
    with_masks = world.generate(0, 12, seed=3, masks=True)
    np.testing.assert_array_equal(plain.images, with_masks.images)  # same pixels either way
    assert plain.masks is None and with_masks.masks.shape == (
        12,
        world.IMAGE_SIZE,
        world.IMAGE_SIZE,
    )
    quadrant = world.FACTOR_NAMES.index("position")
    half = world.IMAGE_SIZE // 2
    for img, mask, codes in zip(with_masks.images, with_masks.masks, with_masks.codes, strict=True):
        assert 0 < mask.sum() < mask.size
        # the mask lies inside the object's quadrant
        row, col = divmod(int(codes[quadrant]), 2)
        inside = mask[row * half : (row + 1) * half, col * half : (col + 1) * half].sum()
        assert inside == mask.sum()
        # object pixels differ from the background colour; background pixels match it
        bg = np.median(img[~mask].reshape(-1, 3).astype(float), axis=0)
        fg = img[mask].reshape(-1, 3).astype(float)
        assert np.abs(np.median(fg, axis=0) - bg).max() > 20
