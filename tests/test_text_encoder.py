"""T5 text encoder and caption cleaning, on a tiny random T5 built offline in tmp folders."""

from __future__ import annotations

import io
import shutil

import pytest
import torch

from magi1.models.caption_cleaning import clean_caption
from magi1.models.text_encoder import OFFICIAL_T5_SUBFOLDER, T5TextEncoder, TextEncoder, resolve_t5_folder

sentencepiece = pytest.importorskip("sentencepiece")
transformers = pytest.importorskip("transformers")

MAX_LENGTH = 24
HIDDEN = 32
SENTENCES = [
    "a cat sits on the mat",
    "the quick brown fox jumps over the lazy dog",
    "a video of waves breaking at sunset",
    "a red ball bounces on the wooden floor",
    "the camera slowly pans across a green field",
]


def _train_spiece() -> bytes:
    """A small unigram model with T5's special ids (pad 0, eos 1, unk 2, no bos)."""
    buffer = io.BytesIO()
    sentencepiece.SentencePieceTrainer.train(
        sentence_iterator=iter(SENTENCES * 10),
        model_writer=buffer,
        vocab_size=80,
        model_type="unigram",
        pad_id=0,
        eos_id=1,
        unk_id=2,
        bos_id=-1,
        hard_vocab_limit=False,
        minloglevel=2,
    )
    return buffer.getvalue()


@pytest.fixture(scope="module")
def t5_parent(tmp_path_factory):
    """Official layout: <parent>/t5-v1_1-xxl/{config.json, model.safetensors, spiece.model}."""
    parent = tmp_path_factory.mktemp("t5")
    folder = parent / OFFICIAL_T5_SUBFOLDER
    folder.mkdir()
    (folder / "spiece.model").write_bytes(_train_spiece())
    torch.manual_seed(0)
    config = transformers.T5Config(d_model=HIDDEN, num_layers=1, num_heads=2, d_kv=16, d_ff=64, vocab_size=96)
    transformers.T5EncoderModel(config).save_pretrained(folder, safe_serialization=True)
    return parent


@pytest.fixture(scope="module")
def encoder(t5_parent):
    return T5TextEncoder(t5_parent, max_length=MAX_LENGTH)


def _spiece_ids(t5_parent, text):
    processor = sentencepiece.SentencePieceProcessor(model_file=str(t5_parent / OFFICIAL_T5_SUBFOLDER / "spiece.model"))
    return processor.encode(text)


def test_shapes_dtypes_and_mask(encoder, t5_parent):
    embeddings, mask = encoder.encode("A cat sits on the mat.")
    assert embeddings.shape == (1, 1, MAX_LENGTH, HIDDEN) and embeddings.dtype == torch.float32
    assert mask.shape == (1, MAX_LENGTH) and mask.dtype == torch.int64
    expected_tokens = len(_spiece_ids(t5_parent, encoder.clean("A cat sits on the mat."))) + 1  # + EOS
    assert expected_tokens < MAX_LENGTH and int(mask.sum()) == expected_tokens
    assert mask[0, :expected_tokens].all() and not mask[0, expected_tokens:].any()
    input_ids, _ = encoder.tokenize("A cat sits on the mat.")
    assert input_ids[0, expected_tokens - 1] == 1 and not input_ids[0, expected_tokens:].any()  # EOS, then pad 0


def test_long_prompt_is_truncated_with_eos(encoder):
    input_ids, mask = encoder.tokenize(" ".join(SENTENCES * 3))
    assert mask.all()
    assert input_ids[0, -1] == 1


def test_empty_prompt_keeps_eos(encoder):
    _, mask = encoder.encode("一只猫")  # the cleaner deletes CJK text entirely
    assert int(mask.sum()) == 1


def test_deterministic_and_padding_invariant(t5_parent, encoder):
    first, mask = encoder.encode("waves at sunset")
    fresh = T5TextEncoder(t5_parent / OFFICIAL_T5_SUBFOLDER, max_length=MAX_LENGTH, cache_size=0)
    assert torch.equal(fresh.encode("waves at sunset")[0], first)
    # Padding is masked out, so real-token embeddings do not depend on the padded length.
    longer, _ = T5TextEncoder(t5_parent, max_length=MAX_LENGTH + 8).encode("waves at sunset")
    count = int(mask.sum())
    torch.testing.assert_close(longer[0, 0, :count], first[0, 0, :count], rtol=1e-5, atol=1e-5)


def test_memory_cache_hits_lru_and_copies(t5_parent):
    encoder = T5TextEncoder(t5_parent, max_length=MAX_LENGTH, cache_size=1)
    embeddings, _ = encoder.encode("a red ball")
    embeddings.zero_()  # callers get copies; the cache is untouched
    again, _ = encoder.encode("a red ball")
    assert encoder.misses == 1 and encoder.memory_hits == 1 and again.abs().sum() > 0
    encoder.encode("a green field")  # evicts "a red ball"
    encoder.encode("a red ball")
    assert encoder.misses == 3


def test_disk_cache_round_trip(t5_parent, tmp_path):
    first = T5TextEncoder(t5_parent, max_length=MAX_LENGTH, cache_dir=tmp_path)
    embeddings, mask = first.encode("the lazy dog")
    files = list(tmp_path.glob("*.safetensors"))
    assert len(files) == 1 and files[0] == first.disk_cache_path("the lazy dog")
    second = T5TextEncoder(t5_parent, max_length=MAX_LENGTH, cache_dir=tmp_path)
    cached_embeddings, cached_mask = second.encode("the lazy dog")
    assert second.disk_hits == 1 and second.misses == 0 and not second.loaded
    assert torch.equal(cached_embeddings, embeddings) and torch.equal(cached_mask, mask)
    # Another length is another key.
    assert T5TextEncoder(t5_parent, max_length=8, cache_dir=tmp_path).disk_cache_path("the lazy dog") != files[0]


def test_direct_folder_with_tokenizer_json_matches_spiece(t5_parent, tmp_path):
    """A folder that holds the model itself, with a fast tokenizer.json instead of spiece.model."""
    source = t5_parent / OFFICIAL_T5_SUBFOLDER
    for name in ("config.json", "model.safetensors"):
        shutil.copy(source / name, tmp_path / name)
    processor = sentencepiece.SentencePieceProcessor(model_file=str(source / "spiece.model"))
    vocab = [(processor.id_to_piece(i), processor.get_score(i)) for i in range(processor.get_piece_size())]
    transformers.T5Tokenizer(vocab=vocab, extra_ids=0).save_pretrained(tmp_path)
    assert resolve_t5_folder(tmp_path) == tmp_path
    direct = T5TextEncoder(tmp_path, max_length=MAX_LENGTH)
    official = T5TextEncoder(t5_parent, max_length=MAX_LENGTH)
    for prompt in ["The quick brown fox, jumps!", "a cat on the mat and a dog on the floor " * 3]:
        assert torch.equal(direct.tokenize(prompt)[0], official.tokenize(prompt)[0])
        assert torch.equal(direct.encode(prompt)[0], official.encode(prompt)[0])


def test_encode_many_and_interface(encoder):
    pairs = encoder.encode_many(["a cat", "a dog"])
    assert len(pairs) == 2 and all(e.shape == (1, 1, MAX_LENGTH, HIDDEN) for e, _ in pairs)

    class Constant(TextEncoder):
        max_length, hidden_size = 4, 2

        def encode(self, prompt):
            return torch.zeros(1, 1, 4, 2), torch.ones(1, 4, dtype=torch.int64)

    assert len(Constant().encode_many(["a", "b", "c"])) == 3


def test_missing_folder_error_names_path_and_contents(tmp_path):
    with pytest.raises(FileNotFoundError) as error:
        T5TextEncoder(tmp_path / "nowhere")
    message = str(error.value)
    assert str(tmp_path / "nowhere" / OFFICIAL_T5_SUBFOLDER) in message
    assert "config.json" in message and "spiece.model" in message
    (tmp_path / "config.json").write_text("{}")
    with pytest.raises(FileNotFoundError, match="weights"):
        resolve_t5_folder(tmp_path)


@pytest.mark.parametrize(
    "raw, cleaned",
    [
        ("A Cat Sitting On A Mat", "a cat sitting on a mat"),
        ("see https://example.com/page?x=1 for a dog", "see for a dog"),
        ("visit www.foo.org now", "visit now"),
        ("photo from example.com/cats of a cat", "photo from of a cat"),
        ("<p>A <b>red</b> ball</p>", "a red ball"),
        ("thanks @john_doe for the cat", "thanks for the cat"),
        ("一只猫 a cat 在草地上", "a cat"),
        ("a cat – running — fast", "a cat - running - fast"),
        ("server 192.168.0.1 down", "server down"),
        ("item #12 and #123456 and 1234567", "item and and"),
        ("file cat.jpg shown", "file shown"),
        ("wait... what", "wait what"),
        ("a cat & dog (cute) [x] {y} | a/b *", "a cat dog cute x y a b"),
        ("red-car-on-a-road_trip", "red car on a road trip"),
        ("buy jc1234 now free shipping", "buy now"),
        ("size 1920x1080 image", "size image"),
        ("hello : world", "hello: world"),
        ("cats,dogs.birds", "cats, dogs. birds"),
        ('"a quoted prompt"', "a quoted prompt"),
        ("“curly” quotes", "\"curly\" quotes"),
        ("-leading and trailing,", "leading and trailing"),
        ("a+cat%20in+space", "a cat in space"),
        ("ｆｕｌｌｗｉｄｔｈ ﬁne", "fullwidth fine"),
        ("price 3.5, total 10.5", "price 3.5, total 10.5"),
        ("a 3d model of a 4k tv, 24fps", "a 3d model of a 4k tv, 24fps"),
        ("A woman walks on the beach. The camera follows her.", "a woman walks on the beach. the camera follows her."),
    ],
)
def test_caption_cleaning_rules(raw, cleaned):
    assert clean_caption(raw) == cleaned


def test_cleaning_runs_twice():
    # Each pass strips one leading "-"; the official cleaner runs twice.
    assert clean_caption("- -a cat", passes=1) == "-a cat"
    assert clean_caption("- -a cat") == "a cat"
