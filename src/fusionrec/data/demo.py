"""The built-in demo catalog: real media files for items with latent attributes, and users who follow them.

The catalog is a small "podcast store". Every item has four latent attributes and each modality
reveals only one of them, so only a model that fuses modalities can know an item completely:

- **genre** (6 topics)  -> the title and written description (genre-specific vocabulary),
- **style** (5 styles)  -> the cover image (colour palette + shape kind, rendered with PIL),
- **mood**  (4 moods)   -> the audio preview (tempo of percussive clicks, major/minor chord, register),
- **tier**  (3 tiers)   -> the tabular ``price`` column (a weaker, overlapping signal); the
  categorical ``format`` column is weakly correlated with the mood.

About 7% of items show a wrong attribute in a modality (the "shown" attribute differs from
the true one) so no single modality is perfect, and a few items get a missing or corrupt
modality on purpose (missing/truncated/garbage PNG, missing/empty/garbage WAV, empty
description). Users like 1-2 values of each attribute; an item's appeal is the *product* of
the matches (times a popularity factor), and the next item tends to share attributes with the
previous one. Sequences are sampled from exactly these probabilities, so
:func:`oracle_metrics` can rank by the true next-item probability and report the ceiling.

Output folder (the data contract of ``docs/ARCHITECTURE.md``)::

    items.csv  interactions.csv  media/images/*.png  media/audio/*.wav
    truth/items.parquet  truth/users.parquet  truth/params.json  truth/corrupt.json  README.txt

Example:
    >>> import tempfile
    >>> from fusionrec.data.demo import DemoConfig, generate, read_summary
    >>> raw = generate(Path(tempfile.mkdtemp()) / "demo", DemoConfig(n_items=20, n_users=10))
    >>> s = read_summary(raw); (s["items"], s["users"], (raw / "items.csv").exists())
    (20, 10, True)
"""

from __future__ import annotations

import dataclasses

import io
import json
import os
import re
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import pandas as pd
from pydantic import Field

from fusionrec.artifacts import artifact_dir, check_output, write_manifest
from fusionrec.config import StepConfig
from fusionrec.progress import get_logger, progress

log = get_logger(__name__)

GENRES = ("space", "crime", "cooking", "sports", "nature", "history")
STYLES = ("neon", "sunset", "ocean", "checker", "forest")
MOODS = ("calm", "melancholic", "upbeat", "tense")
TIERS = ("budget", "standard", "premium")
FORMATS = ("short", "standard", "long", "series")

CORRUPT_KINDS = (
    "image_missing_file",  # items.csv names a PNG that does not exist
    "image_truncated",  # a PNG cut after 40% of its bytes
    "image_garbage",  # random bytes with a .png name
    "audio_missing_file",  # items.csv names a WAV that does not exist
    "audio_empty",  # a zero-length .wav
    "audio_garbage",  # random bytes with a .wav name
    "description_empty",  # empty description (title kept)
)

# Behaviour kinds, weakest first. A kind is drawn after the item sequence (its own RNG stream, so the
# items and timestamps are those of a catalog without kinds) from how many attributes (genre, style,
# mood) the user's NEXT item shares with this one: the stronger kinds go with items that shape what
# comes next, so they are rarer and more predictive of the next item. Row s = attributes shared.
EVENT_KINDS = ("view", "play", "complete", "purchase")
EVENT_WEIGHTS = {"view": 0.5, "play": 1.0, "complete": 1.5, "purchase": 3.0}
KIND_GIVEN_SHARED = np.array([
    [0.78, 0.18, 0.03, 0.01],
    [0.50, 0.35, 0.10, 0.05],
    [0.15, 0.35, 0.30, 0.20],
    [0.05, 0.20, 0.35, 0.40],
])
KIND_LAST = np.array([0.45, 0.35, 0.13, 0.07])  # a user's last event (no next item yet)

SECONDS_PER_DAY = 86_400
EPOCH_START = 1_704_067_200  # 2024-01-01T00:00:00Z


class DemoConfig(StepConfig):
    """Settings of the demo catalog generator (config file section ``demo``)."""

    # Hard caps far above any demo; what fits on this machine is checked by ``check_fits``.
    n_items: int = Field(2000, ge=10, le=10_000_000, description="number of items")
    n_users: int = Field(1000, ge=2, le=10_000_000, description="number of users")
    events_per_user: int = Field(30, ge=3, le=10_000, description="mean events per user (each user gets 0.5x..1.5x, at least 3)")
    seed: int = Field(0, description="random seed; the same seed gives the same bytes")
    image_size: int = Field(96, ge=16, le=512, description="cover image side in pixels")
    audio_seconds: float = Field(3.0, gt=0.1, le=30.0, description="audio preview length (16 kHz mono, 16-bit WAV)")
    sample_rate: int = Field(16000, ge=8000, le=48000)
    shown_noise: float = Field(0.07, ge=0.0, le=1.0, description="share of items whose modality shows a wrong attribute (per modality)")
    corrupt_share: float = Field(0.015, ge=0.0, le=0.5, description="share of items with a missing/corrupt modality (at least one of each kind)")
    dislike: float = Field(0.12, gt=0.0, le=1.0, description="appeal factor of an attribute value the user does not like (1 = liked)")
    tier_dislike: float = Field(0.6, gt=0.0, le=1.0, description="appeal factor of a price tier the user does not prefer")
    sequential: float = Field(1.5, ge=0.0, description="next item: appeal x (1 + sequential x shared attributes with the previous item)")
    popularity_exponent: float = Field(0.8, ge=0.0, description="appeal x popularity^exponent (popularity ~ lognormal)")
    explore: float = Field(0.08, ge=0.0, le=1.0, description="share of events drawn by popularity alone")
    tie_share: float = Field(0.03, ge=0.0, le=1.0, description="share of events with the same timestamp as the previous one")


# ----------------------------------------------------------------------------------------------
# text
# ----------------------------------------------------------------------------------------------
_VOCAB: dict[str, dict[str, Sequence[str]]] = {
    "space": {
        "noun": ("galaxy", "nebula", "rocket", "orbit", "telescope", "black hole", "astronaut", "comet", "exoplanet", "space station", "supernova", "asteroid"),
        "adj": ("cosmic", "interstellar", "orbital", "lunar", "galactic", "stellar", "Martian", "celestial"),
        "sent": (
            "Astronomers explain how a {noun} forms far beyond our solar system.",
            "We follow the {adj} journey of an {noun2} from launch pad to orbit.",
            "A planetary scientist talks about gravity, light years and the search for alien life.",
            "This episode tours the night sky through the lens of a giant {noun}.",
            "Mission control, rocket fuel and zero gravity: the story of a {adj} expedition.",
            "From the Big Bang to dark matter, the {adj} physics of the universe made simple.",
            "What would it take for astronauts to live on Mars or the Moon?",
        ),
    },
    "crime": {
        "noun": ("detective", "murder", "heist", "alibi", "suspect", "courtroom", "cold case", "forensics", "witness", "smuggler", "con artist", "verdict"),
        "adj": ("unsolved", "notorious", "criminal", "mysterious", "shocking", "undercover", "deadly", "fraudulent"),
        "sent": (
            "Detectives reopen an {adj} murder case decades after the crime.",
            "A {noun} lies, a {noun2} talks, and the jury must decide who is guilty.",
            "Forensic evidence, fingerprints and DNA unravel a {adj} bank robbery.",
            "Inside the interrogation room with the police and their prime suspect.",
            "The true story of a {adj} heist, the getaway and the trial that followed.",
            "Investigators chase a killer through witness statements and crime scene clues.",
            "A prosecutor and a defence lawyer argue over the {adj} verdict.",
        ),
    },
    "cooking": {
        "noun": ("recipe", "sourdough", "kitchen", "spice", "chef", "dumpling", "pasta", "barbecue", "dessert", "soup", "curry", "pastry"),
        "adj": ("delicious", "savory", "crispy", "homemade", "spicy", "buttery", "seasonal", "slow-cooked"),
        "sent": (
            "A chef shares a {adj} {noun} recipe with garlic, herbs and olive oil.",
            "We bake bread, knead dough and taste the perfect {adj} crust.",
            "Chopping onions, roasting vegetables and simmering a {adj} sauce for dinner.",
            "The secrets of a restaurant kitchen: knives, ovens and the flavour of fresh {noun}.",
            "How to season, fry and plate a {adj} meal in thirty minutes.",
            "Ingredients, cookbooks and family dinners around a {adj} {noun2}.",
            "Tasting notes on cheese, wine and {adj} street food from the market.",
        ),
    },
    "sports": {
        "noun": ("football", "marathon", "tennis", "basketball", "coach", "stadium", "championship", "goalkeeper", "cycling race", "playoffs", "striker", "boxing match"),
        "adj": ("athletic", "championship", "victorious", "competitive", "record-breaking", "professional", "winning", "olympic"),
        "sent": (
            "The coach breaks down the {adj} tactics behind last night's {noun} final.",
            "Athletes train for the marathon: sprints, stamina and a {adj} finish line.",
            "Fans in the stadium cheer as the team scores in overtime.",
            "A {adj} season of goals, transfers and league standings reviewed match by match.",
            "Inside the locker room before the {noun}: the players, the referee and the score.",
            "How a {adj} {noun2} won the championship trophy against the odds.",
            "Training drills, injuries and the road to the olympic podium.",
        ),
    },
    "nature": {
        "noun": ("rainforest", "wildlife", "glacier", "coral reef", "wolf pack", "migration", "wetland", "mountain forest", "bird song", "river delta", "savanna", "whale"),
        "adj": ("wild", "endangered", "untamed", "ancient", "migratory", "tropical", "rugged", "pristine"),
        "sent": (
            "Biologists track {adj} animals across the {noun} at dawn.",
            "Trees, fungi and insects: the hidden ecosystem of a {adj} {noun2}.",
            "Conservationists protect {adj} species from habitat loss and climate change.",
            "A field guide to birds, butterflies and wildflowers in the {noun}.",
            "Following the great migration of herds across rivers and grasslands.",
            "Ocean currents, coral reefs and the {adj} life beneath the waves.",
            "Hiking through the {adj} wilderness to listen to frogs, owls and wolves.",
        ),
    },
    "history": {
        "noun": ("empire", "medieval castle", "revolution", "pharaoh", "dynasty", "battlefield", "ancient Rome", "archive", "monarchy", "crusade", "treaty", "Viking raid"),
        "adj": ("ancient", "medieval", "imperial", "forgotten", "historic", "royal", "Victorian", "Renaissance"),
        "sent": (
            "Historians retell the rise and fall of an {adj} empire.",
            "Kings, queens and the {adj} court intrigue behind a famous {noun}.",
            "Archaeologists dig up ruins, coins and manuscripts from the {adj} past.",
            "The causes, battles and aftermath of a {adj} revolution.",
            "Letters in the archive reveal everyday life in the {adj} century.",
            "How a {noun} shaped centuries of war, trade and diplomacy.",
            "Pharaohs, emperors and the monuments of {adj} civilisations.",
        ),
    },
}
_TITLE_TEMPLATES = ("The {Adj} {Noun}", "{Noun}: {Adj} Stories", "{Adj} {Noun} Hour", "Tales of the {Adj} {Noun}", "{Noun} Weekly", "Inside the {Noun}", "{Adj} Nights")
_GENERIC_SENTENCES = (
    "Episode {n} of the series.",
    "Hosted by {host}.",
    "New episodes every {day}.",
    "Recorded with listeners' questions.",
    "About {m} minutes long.",
)
_HOSTS = ("Alex Moreno", "Priya Shah", "Sam Okafor", "Lena Fischer", "Kenji Ito", "Maria Rossi", "Tom Baker", "Ines Duarte")
_DAYS = ("Monday", "Tuesday", "Wednesday", "Thursday", "Friday", "weekend")


def _cap(s: str) -> str:
    return " ".join(w[:1].upper() + w[1:] for w in s.split(" "))


def _text(genre: int, rng: np.random.Generator) -> tuple[str, str]:
    vocab = _VOCAB[GENRES[genre]]
    nouns, adjs, sents = vocab["noun"], vocab["adj"], vocab["sent"]

    def fill(tpl: str) -> str:
        n1, n2 = rng.choice(len(nouns), 2, replace=False)
        return tpl.format(noun=nouns[n1], noun2=nouns[n2], adj=adjs[rng.integers(len(adjs))], Adj=_cap(adjs[rng.integers(len(adjs))]), Noun=_cap(nouns[n1]))

    title = fill(_TITLE_TEMPLATES[rng.integers(len(_TITLE_TEMPLATES))])
    k = int(rng.integers(2, 4))
    picked = [fill(sents[j]) for j in rng.choice(len(sents), k, replace=False)]
    if rng.random() < 0.6:
        g = _GENERIC_SENTENCES[rng.integers(len(_GENERIC_SENTENCES))]
        picked.insert(int(rng.integers(len(picked) + 1)), g.format(n=int(rng.integers(1, 120)), host=_HOSTS[rng.integers(len(_HOSTS))], day=_DAYS[rng.integers(len(_DAYS))], m=int(rng.integers(15, 90))))
    desc = " ".join(p[:1].upper() + p[1:] for p in picked)
    return title, _ARTICLE.sub(_fix_article, desc)


_ARTICLE = re.compile(r"\b([Aa])n? (?=(\w))")


def _fix_article(m: re.Match) -> str:
    return (m.group(1) + ("n " if m.group(2).lower() in "aeiou" else " "))


# ----------------------------------------------------------------------------------------------
# images
# ----------------------------------------------------------------------------------------------
def _jitter(rgb: tuple[int, int, int], rng: np.random.Generator, amount: int = 25) -> tuple[int, int, int]:
    return tuple(int(np.clip(c + rng.integers(-amount, amount + 1), 0, 255)) for c in rgb)  # type: ignore[return-value]


def _image(style: int, size: int, rng: np.random.Generator) -> bytes:
    """Render a cover in one of the 5 styles and return PNG bytes (no metadata, deterministic)."""
    from PIL import Image, ImageDraw

    s = size
    name = STYLES[style]
    if name == "neon":  # bright filled circles on black
        img = Image.new("RGB", (s, s), _jitter((10, 10, 20), rng, 10))
        d = ImageDraw.Draw(img)
        palette = [(255, 0, 200), (0, 240, 255), (180, 255, 0)]
        for _ in range(int(rng.integers(5, 10))):
            r = int(rng.integers(s // 12, s // 5))
            x, y = rng.integers(0, s, 2)
            d.ellipse([x - r, y - r, x + r, y + r], fill=_jitter(palette[rng.integers(3)], rng, 20))
    elif name == "sunset":  # vertical orange->red gradient with dark purple triangles (mountains)
        top, bottom = np.array(_jitter((255, 190, 60), rng)), np.array(_jitter((220, 40, 30), rng))
        ramp = np.linspace(0.0, 1.0, s)[:, None, None]
        arr = (top * (1 - ramp) + bottom * ramp).repeat(s, axis=1).astype(np.uint8)
        img = Image.fromarray(arr, "RGB")
        d = ImageDraw.Draw(img)
        for _ in range(int(rng.integers(2, 5))):
            cx = int(rng.integers(0, s))
            h = int(rng.integers(s // 4, s // 2))
            w = int(rng.integers(s // 4, s // 2))
            d.polygon([(cx - w, s), (cx, s - h), (cx + w, s)], fill=_jitter((70, 20, 80), rng, 15))
        sr = int(rng.integers(s // 10, s // 6))
        sx, sy = int(rng.integers(sr, s - sr)), int(rng.integers(sr, s // 2))
        d.ellipse([sx - sr, sy - sr, sx + sr, sy + sr], fill=(255, 240, 120))
    elif name == "ocean":  # blue background with white/teal wavy stripes
        img = Image.new("RGB", (s, s), _jitter((20, 60, 170), rng))
        d = ImageDraw.Draw(img)
        xs = np.arange(0, s + 1, 2)
        freq = rng.uniform(1.5, 3.5) * 2 * np.pi / s
        amp = rng.uniform(s / 24, s / 10)
        n_waves = int(rng.integers(4, 8))
        for k in range(n_waves):
            y0 = (k + 0.5) * s / n_waves
            ph = rng.uniform(0, 2 * np.pi)
            pts = [(int(x), int(y0 + amp * np.sin(freq * x + ph))) for x in xs]
            colour = (240, 250, 255) if k % 2 == 0 else (60, 220, 210)
            d.line(pts, fill=_jitter(colour, rng, 10), width=max(2, s // 24))
    elif name == "checker":  # black/white checkerboard with a few red cells
        n = int(rng.integers(4, 9))
        cell = s / n
        img = Image.new("RGB", (s, s), (245, 245, 245))
        d = ImageDraw.Draw(img)
        off = int(rng.integers(2))
        for i in range(n):
            for j in range(n):
                if (i + j + off) % 2 == 0:
                    d.rectangle([int(i * cell), int(j * cell), int((i + 1) * cell) - 1, int((j + 1) * cell) - 1], fill=(15, 15, 15))
        for _ in range(int(rng.integers(1, 4))):
            i, j = rng.integers(0, n, 2)
            d.rectangle([int(i * cell), int(j * cell), int((i + 1) * cell) - 1, int((j + 1) * cell) - 1], fill=_jitter((230, 20, 30), rng, 15))
    else:  # forest: green background with brown trunks and yellow-green canopy blobs
        img = Image.new("RGB", (s, s), _jitter((30, 120, 40), rng))
        d = ImageDraw.Draw(img)
        for _ in range(int(rng.integers(3, 7))):
            x = int(rng.integers(0, s))
            w = int(rng.integers(s // 20, s // 10)) + 1
            d.rectangle([x - w, s // 3, x + w, s], fill=_jitter((100, 60, 20), rng, 15))
            r = int(rng.integers(s // 8, s // 5))
            cy = int(rng.integers(s // 6, s // 3))
            d.ellipse([x - r, cy - r, x + r, cy + r], fill=_jitter((150, 200, 40), rng, 20))
    buf = io.BytesIO()
    img.save(buf, format="PNG", optimize=False, compress_level=6)
    return buf.getvalue()


# ----------------------------------------------------------------------------------------------
# audio
# ----------------------------------------------------------------------------------------------
# mood -> (bpm range, minor?, root frequency range Hz, click gain, chord gain)
_MOOD_AUDIO = {
    "calm": ((56, 72), False, (110.0, 165.0), 0.15, 0.9),
    "melancholic": ((66, 84), True, (220.0, 330.0), 0.25, 0.8),
    "upbeat": ((126, 150), False, (440.0, 660.0), 0.9, 0.5),
    "tense": ((150, 176), True, (70.0, 105.0), 1.0, 0.6),
}


def _audio(mood: int, seconds: float, sr: int, rng: np.random.Generator) -> bytes:
    """Synthesize a preview: sustained triad (major/minor, register) + percussive clicks at the tempo; 16-bit WAV bytes."""
    import soundfile as sf

    (bpm_lo, bpm_hi), minor, (f_lo, f_hi), click_gain, chord_gain = _MOOD_AUDIO[MOODS[mood]]
    n = int(round(seconds * sr))
    t = np.arange(n, dtype=np.float64) / sr
    root = rng.uniform(f_lo, f_hi)
    ratios = np.array([1.0, 2 ** ((3 if minor else 4) / 12), 2 ** (7 / 12)])
    freqs = root * ratios
    phases = rng.uniform(0, 1, size=(3, 1))
    # phase in cycles computed in float64 and wrapped, the sines in float32 (fast, vectorised)
    cyc = ((freqs[:, None] * t[None, :] + phases) % 1.0).astype(np.float32) * np.float32(2 * np.pi)
    tones = np.sin(cyc) + np.float32(0.3) * np.sin(2 * cyc)
    bpm = rng.uniform(bpm_lo, bpm_hi)
    beat = 60.0 / bpm
    # chord re-struck every 2 beats with an exponential decay
    env = np.exp((-(t % (2 * beat)) * (1.5 if minor else 1.0)).astype(np.float32))
    chord = chord_gain * env * tones.sum(axis=0) / 3.0
    # percussive clicks: filtered noise bursts at each beat
    burst_len = int(0.03 * sr)
    burst = rng.standard_normal(burst_len) * np.exp(-np.arange(burst_len) / (0.006 * sr))
    burst = np.diff(burst, prepend=0.0)  # crude high-pass: a click, not a thump
    clicks = np.zeros(n)
    start = rng.uniform(0, beat)
    for b in np.arange(start, seconds, beat):
        i = int(b * sr)
        m = min(burst_len, n - i)
        clicks[i : i + m] += burst[:m]
    y = chord + click_gain * clicks
    y = 0.8 * y / (np.abs(y).max() + 1e-9)
    pcm = np.round(y * 32767).astype(np.int16)
    buf = io.BytesIO()
    sf.write(buf, pcm, sr, format="WAV", subtype="PCM_16")
    return buf.getvalue()


# ----------------------------------------------------------------------------------------------
# behaviour model (shared by the generator and the oracle)
# ----------------------------------------------------------------------------------------------
@dataclass
class Truth:
    """The latent world: item attributes/popularity and user preference weights, as arrays."""

    item_ids: np.ndarray  # [I] str
    genre: np.ndarray  # [I] int
    style: np.ndarray
    mood: np.ndarray
    tier: np.ndarray
    popularity: np.ndarray  # [I] float > 0
    user_ids: np.ndarray  # [U] str
    w_genre: np.ndarray  # [U, 6]
    w_style: np.ndarray  # [U, 5]
    w_mood: np.ndarray  # [U, 4]
    w_tier: np.ndarray  # [U, 3]
    sequential: float
    popularity_exponent: float
    explore: float

    def appeal(self, users: np.ndarray) -> np.ndarray:
        """Static appeal [len(users), I] = product of attribute matches x popularity^exponent."""
        pop = self.popularity ** self.popularity_exponent
        return (
            self.w_genre[users][:, self.genre]
            * self.w_style[users][:, self.style]
            * self.w_mood[users][:, self.mood]
            * self.w_tier[users][:, self.tier]
            * pop[None, :]
        )

    def next_probs(self, users: np.ndarray, prev: np.ndarray, consumed: np.ndarray, appeal: np.ndarray | None = None) -> np.ndarray:
        """True next-item probabilities [B, I] given each user's previous item (-1 = none) and consumed mask [B, I]."""
        a = self.appeal(users) if appeal is None else appeal
        has_prev = prev >= 0
        p = np.where(has_prev, prev, 0)
        shared = (
            (self.genre[None, :] == self.genre[p][:, None]).astype(np.float64)
            + (self.style[None, :] == self.style[p][:, None])
            + (self.mood[None, :] == self.mood[p][:, None])
        )
        seq = 1.0 + self.sequential * shared * has_prev[:, None]
        avail = ~consumed
        q = a * seq * avail
        q /= np.maximum(q.sum(axis=1, keepdims=True), 1e-300)
        pop = self.popularity[None, :] * avail
        pop = pop / np.maximum(pop.sum(axis=1, keepdims=True), 1e-300)
        return (1.0 - self.explore) * q + self.explore * pop

    # -- persistence ----------------------------------------------------------------------
    def save(self, folder: Path, extra_items: pd.DataFrame) -> None:
        folder.mkdir(parents=True, exist_ok=True)
        items = pd.DataFrame(
            {
                "item_id": self.item_ids,
                "genre": [GENRES[g] for g in self.genre],
                "style": [STYLES[s] for s in self.style],
                "mood": [MOODS[m] for m in self.mood],
                "tier": [TIERS[t] for t in self.tier],
                "popularity": self.popularity,
            }
        )
        items = pd.concat([items, extra_items.reset_index(drop=True)], axis=1)
        items.to_parquet(folder / "items.parquet", index=False)
        users = pd.DataFrame({"user_id": self.user_ids})
        for name, w, labels in (("genre", self.w_genre, GENRES), ("style", self.w_style, STYLES), ("mood", self.w_mood, MOODS), ("tier", self.w_tier, TIERS)):
            users[f"likes_{name}"] = ["|".join(labels[j] for j in np.flatnonzero(row == 1.0)) for row in w]
            for j, lab in enumerate(labels):
                users[f"w_{name}_{lab}"] = w[:, j]
        users.to_parquet(folder / "users.parquet", index=False)
        params = {"sequential": self.sequential, "popularity_exponent": self.popularity_exponent, "explore": self.explore,
                  "genres": GENRES, "styles": STYLES, "moods": MOODS, "tiers": TIERS}
        (folder / "params.json").write_text(json.dumps(params, indent=2, sort_keys=True) + "\n", encoding="utf-8")

    @classmethod
    def load(cls, raw_dir: str | os.PathLike) -> "Truth":
        folder = Path(raw_dir) / "truth"
        if not (folder / "params.json").exists():
            raise FileNotFoundError(f"{folder}: no ground truth here (params.json); was this folder written by `fusionrec demo-data`?")
        params = json.loads((folder / "params.json").read_text(encoding="utf-8"))
        items = pd.read_parquet(folder / "items.parquet")
        users = pd.read_parquet(folder / "users.parquet")

        def codes(col: pd.Series, labels: Sequence[str]) -> np.ndarray:
            return col.map({v: i for i, v in enumerate(labels)}).to_numpy(np.int64)

        def weights(name: str, labels: Sequence[str]) -> np.ndarray:
            return users[[f"w_{name}_{lab}" for lab in labels]].to_numpy(np.float64)

        return cls(
            item_ids=items["item_id"].astype(str).to_numpy(),
            genre=codes(items["genre"], GENRES),
            style=codes(items["style"], STYLES),
            mood=codes(items["mood"], MOODS),
            tier=codes(items["tier"], TIERS),
            popularity=items["popularity"].to_numpy(np.float64),
            user_ids=users["user_id"].astype(str).to_numpy(),
            w_genre=weights("genre", GENRES),
            w_style=weights("style", STYLES),
            w_mood=weights("mood", MOODS),
            w_tier=weights("tier", TIERS),
            sequential=float(params["sequential"]),
            popularity_exponent=float(params["popularity_exponent"]),
            explore=float(params["explore"]),
        )


def event_kinds(seqs: np.ndarray, genre: np.ndarray, style: np.ndarray, mood: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Kind index (into ``EVENT_KINDS``) of every event of ``seqs`` [U, T] (item index, -1 = none).

    Drawn from ``KIND_GIVEN_SHARED[attributes shared with the user's next item]`` (``KIND_LAST`` for a
    user's last event), one uniform per cell of ``seqs`` so the draw does not depend on the items.
    """
    nxt = np.concatenate([seqs[:, 1:], np.full((len(seqs), 1), -1, seqs.dtype)], axis=1)
    a, b = np.maximum(seqs, 0), np.maximum(nxt, 0)
    shared = (genre[a] == genre[b]).astype(np.int64) + (style[a] == style[b]) + (mood[a] == mood[b])
    probs = np.where((nxt >= 0)[..., None], KIND_GIVEN_SHARED[shared], KIND_LAST)
    u = rng.random(seqs.shape)
    return np.minimum((np.cumsum(probs, axis=-1) < u[..., None]).sum(-1), len(EVENT_KINDS) - 1)


def _prefs(rng: np.random.Generator, n_users: int, n_values: int, low: float, max_liked: int = 2) -> np.ndarray:
    w = np.full((n_users, n_values), low)
    n_liked = rng.integers(1, max_liked + 1, size=n_users)
    for u in range(n_users):
        w[u, rng.choice(n_values, int(n_liked[u]), replace=False)] = 1.0
    return w


def _ids(rng: np.random.Generator, n: int, prefix: str, width: int) -> np.ndarray:
    """Unique opaque ids (random hex), carrying no attribute."""
    nums = rng.choice(16**width, size=n, replace=False)
    return np.array([f"{prefix}{x:0{width}x}" for x in nums], dtype=object)


def _rng(seed: int, *stream: int) -> np.random.Generator:
    return np.random.default_rng([seed, *stream])


# ----------------------------------------------------------------------------------------------
# generator
# ----------------------------------------------------------------------------------------------
#: Peak memory of the sequence simulation per (user, item) cell: the [users, items] float64
#: arrays of ``Truth.next_probs`` and the cumulative sum live at once (measured ~80 bytes).
RAM_BYTES_PER_CELL = 96


def estimate_size(cfg: DemoConfig) -> dict[str, int]:
    """Bytes the generator needs: ``ram`` (peak) and ``disk`` (WAV previews dominate).

    >>> s = estimate_size(DemoConfig())
    >>> round(s["disk"] / 2**20), round(s["ram"] / 2**20)
    (243, 185)
    """
    wav = 44 + int(cfg.audio_seconds * cfg.sample_rate) * 2
    png = cfg.image_size * cfg.image_size * 3 + 1024  # upper bound: an uncompressed RGB PNG
    text = 1024  # title, description, CSV row, truth rows
    events = cfg.n_users * (3 * cfg.events_per_user) // 2 * 80
    disk = cfg.n_items * (wav + png + text) + events
    ram = cfg.n_users * cfg.n_items * RAM_BYTES_PER_CELL + cfg.n_users * cfg.events_per_user * 64
    return {"disk": disk, "ram": ram}


def _available_ram() -> int | None:
    try:
        with open("/proc/meminfo", encoding="ascii") as fh:
            for line in fh:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return None


def check_fits(cfg: DemoConfig, out: str | os.PathLike) -> None:
    """Refuse (ValueError, one line) a catalog larger than this machine's free memory or disk.

    The message says how many items (with these users) would fit, instead of dying allocating.
    """
    need = estimate_size(cfg)
    parent = Path(out).resolve()
    while not parent.exists():
        parent = parent.parent
    free_disk = shutil.disk_usage(parent).free
    free_ram = _available_ram()
    per_item_disk = need["disk"] / cfg.n_items
    per_item_ram = need["ram"] / cfg.n_items
    fits = [free_disk // per_item_disk]
    if free_ram is not None:
        fits.append(free_ram // per_item_ram)
    max_items = int(min(fits))
    gib = 2**30
    if need["disk"] > free_disk or (free_ram is not None and need["ram"] > free_ram):
        raise ValueError(
            f"a demo catalog of {cfg.n_items:,} items x {cfg.n_users:,} users needs about {need['ram'] / gib:.1f} GiB of memory and "
            f"{need['disk'] / gib:.1f} GiB of disk; this machine has {(free_ram or 0) / gib:.1f} GiB of memory available and "
            f"{free_disk / gib:.1f} GiB free under {parent}: with {cfg.n_users:,} users at most about {max_items:,} items fit "
            "(fewer users allow more items)")


def generate(out: str | os.PathLike, cfg: DemoConfig | None = None, force: bool = False) -> Path:
    """Write the demo catalog (data contract + ``truth/``) into ``out`` and return ``out``.

    The folder is built under a temporary name and renamed into place; an existing ``out`` is
    replaced only if it is a demo catalog (``force`` replaces anything that is not an input).
    The same ``cfg`` (seed included) gives byte-identical files.
    """
    cfg = cfg or DemoConfig()
    out = Path(out)
    check_output(out, "demo_catalog", (), force)
    check_fits(cfg, out)
    with artifact_dir(out, "demo_catalog", (), force) as tmp:
        summary = _write(tmp, cfg)
        # marks the folder as a demo catalog (so a re-run may replace it); no timestamp, so the
        # same seed still gives the same bytes
        write_manifest(tmp, step="demo-data", kind="demo_catalog", params=cfg, timestamp=False)
    log.info("demo catalog: %d items, %d users, %d events, %d corrupt media -> %s", summary["items"], summary["users"], summary["events"], summary["corrupt"], out)
    return out


def read_summary(raw_dir: str | os.PathLike) -> dict[str, Any]:
    """The counts the generator recorded in ``truth/summary.json``."""
    return json.loads((Path(raw_dir) / "truth" / "summary.json").read_text(encoding="utf-8"))


def _write(root: Path, cfg: DemoConfig) -> dict[str, Any]:
    I, U = cfg.n_items, cfg.n_users
    rng = _rng(cfg.seed, 0)

    # -- latent item attributes ---------------------------------------------------------------
    genre = rng.integers(0, len(GENRES), I)
    style = rng.integers(0, len(STYLES), I)
    mood = rng.integers(0, len(MOODS), I)
    tier = rng.integers(0, len(TIERS), I)
    popularity = rng.lognormal(0.0, 1.0, I)
    item_ids = _ids(rng, I, "it_", 8)

    def shown(true: np.ndarray, n_values: int) -> np.ndarray:
        flip = rng.random(I) < cfg.shown_noise
        other = (true + rng.integers(1, n_values, I)) % n_values
        return np.where(flip, other, true)

    shown_genre, shown_style, shown_mood = shown(genre, len(GENRES)), shown(style, len(STYLES)), shown(mood, len(MOODS))

    # tabular: price overlaps between tiers; format agrees with the mood half the time
    price = np.round(np.exp(rng.normal(np.log([2.0, 6.0, 18.0])[tier], 0.45)), 2)
    fmt = np.where(rng.random(I) < 0.5, mood % len(FORMATS), rng.integers(0, len(FORMATS), I))

    # -- corrupt media on purpose ---------------------------------------------------------------
    n_corrupt = 0 if cfg.corrupt_share == 0 else max(len(CORRUPT_KINDS), int(round(cfg.corrupt_share * I)))
    n_corrupt = min(n_corrupt, I // 2)
    corrupt_items = rng.choice(I, n_corrupt, replace=False)
    corrupt = np.full(I, "", dtype=object)
    for j, i in enumerate(corrupt_items):
        corrupt[i] = CORRUPT_KINDS[j % len(CORRUPT_KINDS)]

    # -- items.csv and media ---------------------------------------------------------------------
    (root / "media" / "images").mkdir(parents=True)
    (root / "media" / "audio").mkdir(parents=True)
    rows = []
    for i in progress(range(I), desc="demo items", unit="item"):
        iid = item_ids[i]
        title, desc = _text(int(shown_genre[i]), _rng(cfg.seed, 1, i))
        img_rel, wav_rel = f"media/images/{iid}.png", f"media/audio/{iid}.wav"
        kind = corrupt[i]
        if kind == "description_empty":
            desc = ""
        png = _image(int(shown_style[i]), cfg.image_size, _rng(cfg.seed, 2, i))
        if kind == "image_truncated":
            png = png[: max(60, int(len(png) * 0.4))]
        elif kind == "image_garbage":
            png = _rng(cfg.seed, 4, i).integers(0, 256, 2048, dtype=np.uint8).tobytes()
        if kind != "image_missing_file":
            (root / img_rel).write_bytes(png)
        if kind == "audio_empty":
            wav = b""
        elif kind == "audio_garbage":
            wav = _rng(cfg.seed, 5, i).integers(0, 256, 4096, dtype=np.uint8).tobytes()
        else:
            wav = _audio(int(shown_mood[i]), cfg.audio_seconds, cfg.sample_rate, _rng(cfg.seed, 3, i))
        if kind != "audio_missing_file":
            (root / wav_rel).write_bytes(wav)
        rows.append((iid, title, desc, img_rel, wav_rel, float(price[i]), FORMATS[fmt[i]]))
    items = pd.DataFrame(rows, columns=["item_id", "title", "description", "image", "audio", "price", "format"])
    items.to_csv(root / "items.csv", index=False)

    # -- users and their sequences ---------------------------------------------------------------
    urng = _rng(cfg.seed, 6)
    user_ids = _ids(urng, U, "u_", 6)
    truth = Truth(
        item_ids=item_ids, genre=genre, style=style, mood=mood, tier=tier, popularity=popularity,
        user_ids=user_ids,
        w_genre=_prefs(urng, U, len(GENRES), cfg.dislike),
        w_style=_prefs(urng, U, len(STYLES), cfg.dislike),
        w_mood=_prefs(urng, U, len(MOODS), cfg.dislike),
        w_tier=_prefs(urng, U, len(TIERS), cfg.tier_dislike, max_liked=1),
        sequential=cfg.sequential, popularity_exponent=cfg.popularity_exponent, explore=cfg.explore,
    )
    lo, hi = max(3, cfg.events_per_user // 2), max(3, (3 * cfg.events_per_user) // 2)
    lengths = np.minimum(urng.integers(lo, hi + 1, U), I - 1)
    T = int(lengths.max())
    seqs = np.full((U, T), -1, dtype=np.int64)
    consumed = np.zeros((U, I), dtype=bool)
    prev = np.full(U, -1, dtype=np.int64)
    users = np.arange(U)
    appeal = truth.appeal(users)
    for step in progress(range(T), desc="demo sequences", unit="step"):
        p = truth.next_probs(users, prev, consumed, appeal)
        cdf = np.cumsum(p, axis=1)
        r = urng.random(U) * cdf[:, -1]
        choice = np.minimum((cdf < r[:, None]).sum(axis=1), I - 1)
        active = step < lengths
        seqs[active, step] = choice[active]
        consumed[users[active], choice[active]] = True
        prev = np.where(active, choice, prev)

    # timestamps: per-user start in the first 120 days, gaps ~ exponential (mean 8 h), a few ties
    start = EPOCH_START + urng.integers(0, 120 * SECONDS_PER_DAY, U)
    gaps = np.ceil(urng.exponential(8 * 3600, (U, T))).astype(np.int64) + 1
    gaps[urng.random((U, T)) < cfg.tie_share] = 0
    gaps[:, 0] = 0
    ts = start[:, None] + np.cumsum(gaps, axis=1)
    ev_u, ev_pos = np.nonzero(seqs >= 0)
    ev_item = seqs[ev_u, ev_pos]
    kind = event_kinds(seqs, genre, style, mood, _rng(cfg.seed, 7))[ev_u, ev_pos]
    inter = pd.DataFrame(
        {
            "user_id": user_ids[ev_u],
            "item_id": item_ids[ev_item],
            "timestamp": ts[ev_u, ev_pos],
            "event": np.asarray(EVENT_KINDS, dtype=object)[kind],
            "weight": np.array([EVENT_WEIGHTS[k] for k in EVENT_KINDS])[kind],
        }
    )
    # a log in time order; a stable sort keeps each user's tied events in sequence order
    inter = inter.sort_values("timestamp", kind="stable").reset_index(drop=True)
    inter.to_csv(root / "interactions.csv", index=False)

    # -- ground truth ----------------------------------------------------------------------------
    extra = pd.DataFrame(
        {
            "shown_genre": [GENRES[g] for g in shown_genre],
            "shown_style": [STYLES[s] for s in shown_style],
            "shown_mood": [MOODS[m] for m in shown_mood],
            "corrupt": corrupt.astype(str),
        }
    )
    truth.save(root / "truth", extra)
    corrupt_list = [{"item_id": item_ids[i], "kind": corrupt[i]} for i in np.flatnonzero(corrupt != "")]
    corrupt_list.sort(key=lambda r: (CORRUPT_KINDS.index(r["kind"]), r["item_id"]))
    (root / "truth" / "corrupt.json").write_text(json.dumps(corrupt_list, indent=2) + "\n", encoding="utf-8")
    summary = {"items": I, "users": U, "events": int(len(inter)), "corrupt": len(corrupt_list), "config": cfg.model_dump(mode="json")}
    (root / "truth" / "summary.json").write_text(json.dumps(summary, indent=2, sort_keys=True) + "\n", encoding="utf-8")
    (root / "README.txt").write_text(_readme(cfg, summary), encoding="utf-8")
    return summary


def _readme(cfg: DemoConfig, summary: dict[str, Any]) -> str:
    return f"""fusionrec built-in demo catalog (synthetic; generated by `fusionrec demo-data`, seed {cfg.seed})

{summary['items']} items, {summary['users']} users, {summary['events']} interactions, {summary['corrupt']} items with a missing/corrupt modality on purpose.

items.csv         item_id, title, description, image, audio (paths relative to this folder), price (numeric), format (categorical)
interactions.csv  user_id, item_id, timestamp (epoch seconds), event (view|play|complete|purchase), weight (0.5|1|1.5|3); in time order
media/images/     {cfg.image_size}x{cfg.image_size} PNG covers, rendered with PIL
media/audio/      {cfg.audio_seconds:g} s, {cfg.sample_rate} Hz mono 16-bit WAV previews, synthesized
truth/            the latent world (not for training):
  items.parquet   item_id, genre, style, mood, tier, popularity, shown_* (what the modality shows), corrupt (kind or '')
  users.parquet   user_id, liked values (likes_*), preference weights w_<attribute>_<value>
  params.json     behaviour parameters (sequential, popularity_exponent, explore)
  corrupt.json    the items with a missing/corrupt modality and which kind
  summary.json    counts and the generator config

Each modality reveals one latent attribute: the text the genre ({', '.join(GENRES)}), the image the
style ({', '.join(STYLES)}), the audio the mood ({', '.join(MOODS)}: tempo of clicks, major/minor chord,
register), the price the tier ({', '.join(TIERS)}); about {cfg.shown_noise:.0%} of items show a wrong value per modality.
A user likes 1-2 values of genre, style and mood and one tier; appeal = product of the matches
(a non-liked value weighs {cfg.dislike:g}, a non-preferred tier {cfg.tier_dislike:g}) x popularity^{cfg.popularity_exponent:g}.
The next item is drawn with probability proportional to appeal x (1 + {cfg.sequential:g} x attributes shared with the
previous item), mixed with {cfg.explore:.0%} popularity-only exploration, never repeating an item.
"""


# ----------------------------------------------------------------------------------------------
# oracle
# ----------------------------------------------------------------------------------------------
def oracle_metrics(raw_dir: str | os.PathLike, dataset: str | os.PathLike, ks: Sequence[int] = (10, 20, 50), split: str = "test",
                   k_max: int = 100, content_only: bool = False, per_case: bool = False, with_kinds: bool = False):
    """The ceiling: rank every item by the generator's TRUE next-item probability for each test case.

    ``raw_dir`` is the generated folder (with ``truth/``), ``dataset`` the ingested dataset
    artifact. Returns ``{"overall": {...}, "warm": {...}, "cold": {...}}`` of Recall/NDCG@k and MRR
    (as :func:`fusionrec.metrics.summarize`), the user's whole history excluded, as for any ranker.

    ``content_only=True`` is the *content oracle*: the true attributes and user preferences, but an
    item with no training event gets the geometric-mean popularity of the trained items instead of
    its hidden one (no model can know how popular a never-seen item is): the ceiling reachable from
    content on cold items. ``per_case=True`` returns ``(summary, per-case DataFrame)``.
``with_kinds=True`` also reads the kind of each case's last history event (``EVENT_KINDS``): by
Bayes, an item's probability is multiplied by ``KIND_GIVEN_SHARED[attributes it shares with the last
item, that kind]``, the ceiling of a model that reads behaviour kinds.

    Example:
        >>> oracle_metrics("data/demo", "artifacts/dataset")["overall"]["ndcg@10"]   # doctest: +SKIP
    """
    from fusionrec.data.dataset import DatasetArtifact
    from fusionrec.metrics import per_case_metrics, ranks_from_topk, summarize

    truth = Truth.load(raw_dir)
    ds = DatasetArtifact(dataset)
    if content_only:
        trained_ids = set(ds.item_ids[np.unique(ds.split("train")["item_idx"].to_numpy())].tolist())
        seen = np.array([iid in trained_ids for iid in truth.item_ids])
        pop = truth.popularity.copy()
        pop[~seen] = float(np.exp(np.log(pop[seen]).mean())) if seen.any() else 1.0
        truth = dataclasses.replace(truth, popularity=pop)
    t_item = {iid: j for j, iid in enumerate(truth.item_ids)}
    t_user = {uid: j for j, uid in enumerate(truth.user_ids)}
    ds_ids = ds.items.sort_values("item_idx")["item_id"].astype(str).to_numpy()
    unknown = [x for x in ds_ids if x not in t_item]
    if unknown:
        raise ValueError(f"{dataset}: {len(unknown)} items are not in {raw_dir}/truth (e.g. '{unknown[0]}'); was the dataset ingested from this folder?")
    # truth row of each item_idx (index 0 = padding -> -1)
    idx_to_truth = np.concatenate([[-1], np.array([t_item[x] for x in ds_ids], dtype=np.int64)])
    user_id_of = dict(zip(ds.users["user_idx"].astype(int), ds.users["user_id"].astype(str)))

    max_len = int(ds.events.groupby("user_idx").size().max())
    cases, hist = ds.eval_cases(split, max_len=max_len)
    k_max = max(k_max, max(ks))
    n_ds = ds.n_items
    if with_kinds:  # kind index of each case's last history event (-1: none, or not a demo kind)
        ev = ds.events
        code = {k: i for i, k in enumerate(EVENT_KINDS)}
        kinds_of = {int(u): g["event"].map(lambda e: code.get(e, -1)).to_numpy(np.int64) for u, g in ev.groupby("user_idx", sort=False)}
        last_kind = np.array([kinds_of[int(u)][int(q) - 1] if int(q) > 0 else -1
                              for u, q in zip(cases["user_idx"], cases["seq_pos"])], dtype=np.int64)
    topk = np.zeros((len(cases), min(k_max, n_ds)), dtype=np.int64)
    batch = 256
    for b0 in range(0, len(cases), batch):
        h = hist[b0 : b0 + batch]
        cu = cases["user_idx"].to_numpy()[b0 : b0 + batch]
        users = np.array([t_user[user_id_of[int(u)]] for u in cu], dtype=np.int64)
        last = h[:, -1]
        prev = np.where(last > 0, idx_to_truth[last], -1)
        consumed_t = np.zeros((len(h), len(truth.item_ids)), dtype=bool)
        rows, cols = np.nonzero(h > 0)
        consumed_t[rows, idx_to_truth[h[rows, cols]]] = True
        p = truth.next_probs(users, prev, consumed_t)
        if with_kinds:
            kind = last_kind[b0 : b0 + batch]
            pp = np.maximum(prev, 0)
            shared = ((truth.genre[None, :] == truth.genre[pp][:, None]).astype(np.int64)
                      + (truth.style[None, :] == truth.style[pp][:, None]) + (truth.mood[None, :] == truth.mood[pp][:, None]))
            like = KIND_GIVEN_SHARED[:, np.maximum(kind, 0)].T[np.arange(len(kind))[:, None], shared]
            p = p * np.where(((prev >= 0) & (kind >= 0))[:, None], like, 1.0)
        # scores over the dataset's catalog (item_idx 1..n), history excluded
        scores = p[:, idx_to_truth[1:]]
        in_hist = np.zeros((len(h), n_ds + 1), dtype=bool)
        in_hist[rows, h[rows, cols]] = True
        scores = np.where(in_hist[:, 1:], -np.inf, scores)
        k = topk.shape[1]
        part = np.argpartition(-scores, k - 1, axis=1)[:, :k]
        order = np.argsort(-np.take_along_axis(scores, part, axis=1), axis=1, kind="stable")
        topk[b0 : b0 + batch] = np.take_along_axis(part, order, axis=1) + 1
    ranks = ranks_from_topk(topk, cases["item_idx"].to_numpy())
    metrics = per_case_metrics(ranks, ks)
    seg = cases["segment"].astype(str).to_numpy()
    summary = {
        "overall": summarize(metrics),
        "warm": summarize(metrics, seg == "warm"),
        "cold": summarize(metrics, seg == "cold"),
    }
    if not per_case:
        return summary
    frame = pd.DataFrame({"case_id": cases["case_id"].to_numpy(np.int64), "user_idx": cases["user_idx"].to_numpy(np.int64),
                          "item_idx": cases["item_idx"].to_numpy(np.int64), "segment": seg, "rank": ranks, **metrics})
    return summary, frame
