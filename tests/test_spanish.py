"""A target in a second language: the Spanish Asterisk prompts, end to end.

The same Allison voice as the demo, in Mexican Spanish (Debian asterisk-core-sounds-es-wav). Each
stage takes its language from its own section (prepare.language, generate.language,
train.language, evaluate.language); these tests check what each one does with `es`.
"""

from __future__ import annotations

import gzip
import json
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import yaml
from tiny_asr import ESPEAK, needs_espeak, speak, tiny_whisper

from core import schema
from core.asr import load_asr
from core.asr.errors import error_counts
from core.asr.normalize import get_normalizer
from core.asr.whisper import WhisperASR
from core.config import load_yaml, parse_args
from data_prep.candidates.plan import _tts_jobs
from data_prep.candidates.speakable import foreign_letters, other_language
from data_prep.sources import ASTERISK, SourceError, read_asterisk, read_text_file

REPO = Path(__file__).resolve().parents[1]
ES = ASTERISK["es"]
needs_es_prompts = pytest.mark.skipif(
    not (ES.sounds.is_dir() and ES.transcripts.is_file()),
    reason=f"the Spanish Asterisk prompts are not installed ({ES.apt})",
)


# -- prepare ---------------------------------------------------------------------------------
@needs_es_prompts
def test_spanish_listing_drops_tones_strips_notes_and_keeps_accents():
    listing = {u.id: u for u in read_asterisk(language="es")}
    assert all(u.id.startswith("asterisk-es-") and u.accent == "es-MX" for u in listing.values())
    # a transcript that is only a note is a tone, in either language of the notes
    for tone in ("ascending-2tone", "beep", "beeperr", "confbridge-join", "tt-monkeys"):
        assert listing[f"asterisk-es-{tone}"].skip_reason == "no_speech"
    # listed with nothing after the colon: speech nobody transcribed, not a tone
    assert listing["asterisk-es-dir-welcome"].skip_reason == "no_transcript"
    noted = listing["asterisk-es-vm-tempgreetactive"]
    assert noted.text == "Sus saludos estan actualmente en uso" and noted.text_edit == "notes_removed"
    assert "último usuario" in listing["asterisk-es-conf-adminmenu-18"].text  # UTF-8, accents kept
    speech = [u for u in listing.values() if not u.skip_reason]
    assert len(speech) > 400 and all(not any(c in u.text for c in "[(<") for u in speech)


def test_unknown_asterisk_language_and_gzipped_text(tmp_path):
    with pytest.raises(SourceError, match=r"packaged in \['en', 'es'\]"):
        next(read_asterisk(language="fr"))
    path = tmp_path / "notes.txt.gz"
    path.write_bytes(gzip.compress("año: contraseña\n".encode("latin-1")))
    assert read_text_file(path, "latin-1") == "año: contraseña\n"
    with pytest.raises(SourceError, match="line 1: not valid utf-8"):
        read_text_file(path, "utf-8")


# -- candidates ------------------------------------------------------------------------------
def test_spanish_letters_are_spanish_not_english():
    assert foreign_letters("Ingrese su contraseña, por favor. ¿Cuál es su número?", "es") == ""
    assert foreign_letters("Ingrese su contraseña", "en") == "ñ"
    assert foreign_letters("Trés opciones", "en") == "é"
    assert foreign_letters("Приве́т", "es") == "Привет"
    assert foreign_letters("Grüße", "es") == "ß"  # ü is Spanish (pingüino), ß is not
    assert other_language("en-us", "es") and other_language("en-gb-scotland", "es")
    assert not other_language("es-419", "es") and not other_language("es-mx", "es")
    assert not other_language("", "es") and not other_language("us", "es")  # unknown: kept


class MixedEngine:
    """Two English voices and two Spanish ones, as flite + espeak-ng would offer them."""

    accents = {"kal": "en-us", "awb": "en-gb-scotland", "es": "es", "es-419": "es-419"}

    def available(self):
        return True

    def voices(self):
        return list(self.accents)

    def accent(self, voice):
        return self.accents[voice]


def test_plan_skips_voices_of_another_language():
    args = SimpleNamespace(
        engines=["test_spanish:MixedEngine"],
        engine_timeout=5.0,
        hf_model="",
        voices=[],
        max_voices_per_engine=0,
        texts_per_voice=0,
        perturb_synthetic_prob=0.0,
        max_synthetic=0,
        voices_per_text=0,
        variants_per_rendering=0,
        language="es",
    )
    texts = ["Ingrese su contraseña", "Gracias", "Привет"]
    jobs, plan = _tts_jobs(texts, 0, args)
    engine = plan["engines"]["test_spanish:MixedEngine"]
    assert engine["voices"] == ["es", "es-419"] and engine["skipped_other_language"] == 2
    assert engine["refused_foreign_script"] == 2  # the Cyrillic line, for each Spanish voice
    assert sorted({(j.voice, j.text) for j in jobs}) == sorted(
        (v, t) for v in ("es", "es-419") for t in texts[:2]
    )
    english = _tts_jobs(texts, 0, SimpleNamespace(**{**vars(args), "language": "en"}))[1]
    # English voices for an English target; the ñ line is not theirs to say
    assert english["engines"]["test_spanish:MixedEngine"]["voices"] == ["awb", "kal"]
    assert english["engines"]["test_spanish:MixedEngine"]["refused_foreign_script"] == 4


@needs_espeak
def test_espeak_lists_its_spanish_voices():
    from data_prep.candidates.tts.espeak import EspeakEngine

    engine = EspeakEngine(language="es")
    voices = engine.voices()
    assert {"es", "es-419", "es+f3", "es-419+m1"} <= set(voices)
    assert {engine.accent(v).split("-")[0] for v in voices} == {"es"}
    samples, rate = engine.synthesize("Ingrese su contraseña", "es-419+f3", seed=1)
    assert len(samples) / rate > 0.5


# -- scoring ---------------------------------------------------------------------------------
def _wer(ref: str, hyp: str, **kw) -> float:
    norm = get_normalizer("es", **kw)
    c = error_counts([norm(ref)], [norm(hyp)], unit="word")
    return float(c.errors.sum() / c.ref_len.sum())


def _cer(ref: str, hyp: str, **kw) -> float:
    norm = get_normalizer("es", **kw)
    c = error_counts([norm(ref)], [norm(hyp)], unit="char")
    return float(c.errors.sum() / c.ref_len.sum())


def test_diacritics_are_spelling_unless_folded():
    ref, hyp = "Contrasena incorrecta.", "¡Contraseña incorrecta!"
    # kept by default: "año" and "ano" are different Spanish words
    assert _wer(ref, hyp) == 0.5 and _cer(ref, hyp) == pytest.approx(1 / 21)
    assert _wer("el año", "el ano") == 0.5
    # folded on request (evaluate.fold_diacritics): references typed without accents
    assert _wer(ref, hyp, fold_diacritics=True) == 0.0 and _cer(ref, hyp, fold_diacritics=True) == 0.0
    assert get_normalizer("es", fold_diacritics=True)("Número, MENÚ") == "numero menu"
    # English always folded them (Whisper's English normalizer); the option changes nothing there
    assert get_normalizer("en")("café") == get_normalizer("en", fold_diacritics=True)("café") == "cafe"


# -- Whisper in Spanish ----------------------------------------------------------------------
@pytest.fixture(scope="module")
def ml_whisper(tmp_path_factory):
    return tiny_whisper(tmp_path_factory.mktemp("ml") / "tiny-ml", multilingual=True)


def _prefix_ids(asr) -> list[int]:
    tok = asr.processor.tokenizer
    return tok.convert_tokens_to_ids(
        ["<|startoftranscript|>", "<|es|>", "<|transcribe|>", "<|notimestamps|>"]
    )


def test_spanish_labels_and_forced_generation(ml_whisper):
    asr = WhisperASR.load(str(ml_whisper), language="es")
    sot, es, transcribe, notimestamps = _prefix_ids(asr)
    batch = asr.collator()([{"audio": np.zeros(8000, np.float32), "text": "contraseña"}])
    # the model prepends <|startoftranscript|> itself; the labels start with the language
    assert batch["labels"][0, :3].tolist() == [es, transcribe, notimestamps]
    text_ids = batch["labels"][0, 3:][batch["labels"][0, 3:] >= 0].tolist()
    # a leading space, as Whisper's own transcripts start (whisper_label_text)
    assert asr.processor.tokenizer.decode(text_ids, skip_special_tokens=True) == " contraseña"
    assert decoder_prompt(asr, np.zeros(16000, np.float32)) == [sot, es, transcribe, notimestamps]
    assert asr.model.generation_config.language == "es"


def decoder_prompt(asr, audio) -> list[int]:
    """The ids the decoder is first run on when ``asr`` transcribes ``audio`` (generate returns
    only what it generated after them)."""
    seen = []

    def record(_module, args, kwargs):
        ids = kwargs.get("input_ids", args[0] if args else None)
        if not seen and ids is not None:
            seen.append(ids[0].tolist())

    handle = asr.model.model.decoder.register_forward_pre_hook(record, with_kwargs=True)
    try:
        asr._generate([audio], num_beams=1)
    finally:
        handle.remove()
    return seen[0]


# -- end to end on real Spanish prompts -----------------------------------------------------
def _config(root: Path, model: Path) -> Path:
    cfg = {
        "run": {"output_dir": str(root / "exp"), "seed": 0},
        "prepare": {
            "source": "asterisk",
            "language": "es",
            "limit": 14,  # the first 14 listed: agent-*, auth-*, three tones and two long menus
            "split_by": "text",
            "test_fraction": 0.3,
        },
        "generate": {
            "language": "es",
            "engines": ["espeak-ng", "flite", "festival"],
            "max_voices_per_engine": 3,
            "texts_per_voice": 4,
            "copies_per_utterance": 1,
            "gate_model": str(model),  # a random tiny multilingual Whisper: decodes in Spanish, hears nothing
            "gate_max_cer": 1000.0,
            "gate_batch_size": 4,
        },
        "filter": {"embedder": "mfcc_stats", "folds": 2, "heldout_fraction": 0.25, "policy": "budget:3"},
        "train": {
            "model_name_or_path": str(model),
            "language": "es",
            "packing": "off",
            "max_steps": 2,
            "per_device_train_batch_size": 2,
            "learning_rate": 1e-3,
            "eval_strategy": "no",
            "save_strategy": "no",
            "load_best_model_at_end": False,
            "report_to": [],
            "final_eval_splits": [],
        },
        "evaluate": {"language": "es", "fold_diacritics": True, "batch_size": 4, "limit": 3},
    }
    path = root / "es.yaml"
    path.write_text(yaml.safe_dump(cfg, allow_unicode=True))
    return path


@pytest.mark.slow
@needs_es_prompts
@pytest.mark.skipif(ESPEAK is None, reason="espeak-ng not installed")
def test_spanish_end_to_end(tmp_path, ml_whisper):
    from data_prep.candidates.generate import generate
    from data_prep.filter.stage import main as filter_main
    from data_prep.prepare import prepare
    from recipe.evaluate import main as evaluate_main
    from recipe.train import main as train_main

    cfg = _config(tmp_path, ml_whisper)
    exp = tmp_path / "exp"
    rep = prepare(*parse_args("prepare", ["--config", str(cfg)]))
    assert rep["language"] == "es" and rep["dropped"]["no_speech"] == 3
    assert rep["dropped"]["too_long"] == 2 and sum(rep["kept"].values()) == 9  # two menus over 30 s

    gen = generate(*parse_args("generate", ["--config", str(cfg)]))
    engines = gen["plan"]["engines"]
    assert len(engines["espeak-ng"]["voices"]) == 3
    assert all(v.split("+")[0] in ("es", "es-419") for v in engines["espeak-ng"]["voices"])
    for english in ("flite", "festival"):
        if engines[english]["available"]:
            assert engines[english]["voices"] == [] and engines[english]["skipped_other_language"] > 0
    gate_dirs = [p for p in (exp / "candidates" / "gate").iterdir() if p.is_dir()]
    assert gate_dirs, "the gate ran"
    candidates = schema.without_audio_decoding(schema.load_split(exp / "candidates" / "dataset"))
    voices = {
        json.loads(g)["voice"]
        for g, o in zip(candidates["generator"], candidates["origin"], strict=True)
        if o == "synthetic"
    }
    assert voices and all(v.startswith("es") for v in voices)

    filter_main(["--config", str(cfg)])
    train_main(["--config", str(cfg)])  # writes <output_dir>/train
    trained = load_asr(str(exp / "train"), device="cpu")
    assert trained.model.generation_config.language == "es"
    assert trained.model.generation_config.task == "transcribe"
    assert decoder_prompt(trained, speak("gracias", "es")) == _prefix_ids(trained)

    evaluate_main(["--config", str(cfg), "--model", str(exp / "train"), "--eval_name", "es"])
    res = json.loads((exp / "eval" / "es" / "results.json").read_text())
    assert res["language"] == "es" and res["normalizer"] == "basic, diacritics folded"


def test_spanish_gpu_config_parses():
    path = REPO / "configs" / "whisper-small-asterisk-es-gpu.yaml"
    cfg = load_yaml(path)
    assert cfg["prepare"]["language"] == cfg["generate"]["language"] == "es"
    assert cfg["train"]["language"] == cfg["evaluate"]["language"] == "es"
    for name in ("prepare", "generate", "filter", "evaluate"):
        parse_args(name, ["--config", str(path)])
    assert cfg["train"]["bf16"] is True
    # transformers refuses bf16 on a machine without a GPU: the rest of the section is checked here
    _, targs, _ = parse_args("train", ["--config", str(path), "--bf16", "false"])
    assert targs.model_name_or_path == "openai/whisper-small" and targs.language == "es"
    parse_args("prepare", ["--config", str(REPO / "configs" / "asterisk-es.yaml")])
