"""Stand-in text model, tokenisation and the cached, bucketed, data-parallel precompute."""

import json
import logging
import os
import shutil
import subprocess
import sys

import jax
import numpy as np
import pytest

from configs import default
from ecg_contrastive.models.bert import load_hf_encoder
from ecg_contrastive.text import precompute
from ecg_contrastive.text.encode import Encoder, bucket_length, plan_batches
from ecg_contrastive.text.precompute import embed_label_prompts, embed_texts
from ecg_contrastive.text.standin import standin_vocabulary, write_standin_model
from ecg_contrastive.text.tokenizer import load_tokenizer, tokenize
from ecg_contrastive.vocab.terms import term_names

REPORTS = [
  "洞調律。心房細動を認める。",
  "洞調律。完全右脚ブロックを認める。",
  "洞調律、正常心電図。",
  "心房細動、心室期外収縮を伴う。II, III, aVF誘導でST低下。",
  "洞調律。心房細動を認める。",
]


@pytest.fixture(scope="module")
def standin(tmp_path_factory) -> str:
  return write_standin_model(str(tmp_path_factory.mktemp("standin")))


def _unit(x: np.ndarray) -> np.ndarray:
  return x / np.linalg.norm(x, axis=-1, keepdims=True)


def test_standin_is_byte_identical_idempotent_and_refuses_foreign_dirs(standin, tmp_path):
  again = write_standin_model(str(tmp_path / "again"))
  for name in sorted(os.listdir(standin)):
    assert (
      open(os.path.join(standin, name), "rb").read() == open(os.path.join(again, name), "rb").read()
    ), name
  mtimes = {n: os.stat(os.path.join(again, n)).st_mtime_ns for n in os.listdir(again)}
  write_standin_model(again)
  assert mtimes == {n: os.stat(os.path.join(again, n)).st_mtime_ns for n in os.listdir(again)}
  other = write_standin_model(str(tmp_path / "seed1"), seed=1)
  assert (
    open(os.path.join(other, "model.safetensors"), "rb").read()
    != open(os.path.join(standin, "model.safetensors"), "rb").read()
  )
  foreign = tmp_path / "foreign"
  foreign.mkdir()
  (foreign / "config.json").write_text('{"model_type": "bert"}')
  with pytest.raises(FileExistsError, match="not the stand-in"):
    write_standin_model(str(foreign))
  with pytest.raises(ValueError, match="not divisible by num_heads 5"):
    write_standin_model(str(tmp_path / "bad"), num_heads=5)


def test_standin_vocabulary_and_character_tokenizer(standin):
  vocab = standin_vocabulary()
  assert (
    len(vocab)
    == len(set(vocab))
    == json.load(open(os.path.join(standin, "config.json")))["vocab_size"]
  )
  required = set("".join(term_names())) | {chr(c) for c in range(0x21, 0x7F)}  # terms, ASCII
  required |= set("ぁゖァヺヵヶーｰ・。、：（）「」〜ＡＺ０９αβμ→±")  # kana, punctuation, full width
  required |= {"\u4e00", "\u9fff", "洞", "脈", "拍", "房", "疑", "伴"}  # CJK ideographs
  assert required - set(vocab) == {"ｰ"}  # half-width katakana is left to NFKC
  tokenizer = load_tokenizer(standin)
  assert type(tokenizer).__name__ == "BertJapaneseTokenizer"
  assert tokenizer.tokenize("ＳＴ低下（Ｖ５） を認める。") == [
    "S",
    "T",
    "低",
    "下",
    "(",
    "V",
    "5",
    ")",
    "を",
    "認",
    "め",
    "る",
    "。",
  ]


def test_mecab_wordpiece_tokenizer_from_local_vocabulary(tmp_path):
  words = [
    "[PAD]",
    "[UNK]",
    "[CLS]",
    "[SEP]",
    "[MASK]",
    "洞",
    "調律",
    "。",
    "完全",
    "右",
    "##脚",
    "ブロック",
    "を",
    "認める",
    "心房",
    "細動",
    "、",
  ]
  (tmp_path / "vocab.txt").write_text("\n".join(words) + "\n")
  (tmp_path / "tokenizer_config.json").write_text(
    json.dumps(
      {
        "tokenizer_class": "BertJapaneseTokenizer",
        "word_tokenizer_type": "mecab",
        "subword_tokenizer_type": "wordpiece",
        "mecab_kwargs": {"mecab_dic": "unidic_lite"},
        "do_lower_case": False,
      }
    )
  )
  tokenizer = load_tokenizer(str(tmp_path))
  assert tokenizer.tokenize("洞調律。完全右脚ブロックを認める。") == [
    "洞",
    "調律",
    "。",
    "完全",
    "右",
    "##脚",
    "ブロック",
    "を",
    "認める",
    "。",
  ]
  result = tokenize(["心房細動、心室期外収縮を伴う。"], tokenizer, max_length=32)
  # MeCab words: 心房 細動 、 心室 期 外 収縮 を 伴う 。 -> five unknown words
  assert result.ids[0].tolist() == [2, 14, 15, 16, 1, 1, 1, 1, 12, 1, 7, 3]
  assert (result.unk_tokens, result.texts_with_unk) == (5, 1)


def test_tokenize_counts_empty_truncated_and_unknown(standin):
  tokenizer = load_tokenizer(standin)
  result = tokenize(["", "   ", "あ" * 100, "😀心房細動😀", "洞調律"], tokenizer, max_length=16)
  assert result.lengths.tolist() == [2, 2, 16, 8, 5]
  assert result.ids[2][0] == tokenizer.cls_token_id and result.ids[2][-1] == tokenizer.sep_token_id
  assert (result.empty, result.truncated, result.unk_tokens, result.texts_with_unk) == (2, 1, 2, 1)
  assert result.unk_examples == ["😀心房細動😀"]


def test_bucket_lengths_and_batch_plan():
  assert bucket_length(np.array([1, 8, 9, 63, 64, 100, 127, 128, 129, 300]), 512).tolist() == [
    8,
    8,
    16,
    64,
    64,
    112,
    128,
    128,
    160,
    320,
  ]
  assert bucket_length(129, 130) == 130
  lengths = np.random.default_rng(0).integers(3, 129, 1000)
  batches = plan_batches(lengths, batch_size=100, num_devices=8, max_length=128)
  covered = np.concatenate([b.indices for b in batches])
  assert sorted(covered.tolist()) == list(range(1000))
  for b in batches:
    assert b.rows % 8 == 0 and len(b.indices) <= b.rows < len(b.indices) + 8
    assert (bucket_length(lengths[b.indices], 128) == b.length).all()  # one bucket per batch
  padded = sum(b.rows * b.length for b in batches)
  assert (
    padded < 1.16 * lengths.sum()
  )  # bucket steps 8 and 16, rows to 8 devices; data order: ~1.9x
  assert [b.length for b in batches] == sorted(b.length for b in batches)
  assert len({(b.rows, b.length) for b in batches}) <= 2 * 12  # 12 bucket lengths up to 128


def test_encoder_shards_rows_over_the_shared_mesh_of_local_devices(standin):
  from ecg_contrastive.sharding import DATA_AXIS, data_sharding, make_mesh, replicated

  module, params, _ = load_hf_encoder(standin)
  encoder = Encoder(module, params, "mean")
  local = make_mesh(jax.local_devices())  # sharding.py: the one home of the mesh and its axis name
  assert encoder.num_devices == len(jax.local_devices()) == 8
  assert encoder._rows == data_sharding(local) and encoder._rows.spec == jax.sharding.PartitionSpec(
    DATA_AXIS
  )
  leaf = jax.tree_util.tree_leaves(encoder._params)[0]
  assert leaf.sharding == replicated(local)
  ids = np.ones((8, 16), np.int32)
  out = encoder(ids, ids)
  assert out.shape == (8, 128) and out.sharding.spec[0] == DATA_AXIS


def test_embed_texts_dedupes_and_matches_a_plain_forward(standin, tmp_path):
  table = embed_texts(REPORTS, standin, batch_size=3, cache_dir=str(tmp_path), progress=False)
  assert table.texts == sorted(set(REPORTS)) and table.embeddings.shape == (4, 128)
  rows = table.rows(REPORTS)
  assert rows.dtype == np.int32 and rows[0] == rows[4] and len(set(rows[:4].tolist())) == 4
  s = table.summary
  assert (s["texts"], s["unique"], s["devices"], s["batches"], s["from_cache"]) == (
    5,
    4,
    8,
    3,
    False,
  )
  # Token counts 12, 15 | 19 | 35 fall in buckets 16, 24 and 40: three batches, rows
  # padded to the 8 devices.
  assert (s["tokens"], s["padded_tokens"]) == (12 + 15 + 19 + 35, 8 * 16 + 8 * 24 + 8 * 40)
  # Reference: one unbucketed batch on one device, padded to the longest text.
  module, params, _ = load_hf_encoder(standin)
  ids = tokenize(REPORTS, load_tokenizer(standin), 128).ids
  mask = np.array([[1] * len(i) + [0] * (35 - len(i)) for i in ids])
  padded = np.array([i.tolist() + [0] * (35 - len(i)) for i in ids])
  hidden, _ = jax.jit(module.apply)({"params": params}, padded, mask)
  expected = (np.asarray(hidden) * mask[..., None]).sum(1) / mask.sum(1, keepdims=True)
  np.testing.assert_allclose(table.embeddings[rows], expected, rtol=1e-5, atol=1e-6)
  with pytest.raises(KeyError, match="text 1 .'洞調律。心室頻拍。'. is not in the embedding table"):
    table.rows([REPORTS[0], "洞調律。心室頻拍。"])


@pytest.mark.slow
def test_bad_reports_are_counted_and_kept(standin, tmp_path, caplog):
  texts = ["", "洞調律。" + "心房細動を認める。" * 20, "😀洞調律🫀。", "洞調律。"]
  with caplog.at_level(logging.WARNING):
    table = embed_texts(texts, standin, max_length=32, cache_dir=str(tmp_path), progress=False)
  s = table.summary
  assert (s["unique"], s["empty"], s["truncated"], s["unk_tokens"], s["texts_with_unk"]) == (
    4,
    1,
    1,
    2,
    1,
  )
  assert s["unk_examples"] == ["😀洞調律🫀。"]
  assert len(table.rows(texts)) == 4 and np.isfinite(table.embeddings).all()
  assert "1 empty texts, 1 truncated to 32 tokens, 2 [UNK] tokens in 1 texts" in caplog.text


def test_bad_arguments_and_model_directories_give_clear_errors(standin, tmp_path):
  with pytest.raises(TypeError, match="text 1 is bytes"):
    embed_texts(["洞調律", "洞調律".encode()], standin, cache_dir=str(tmp_path))
  with pytest.raises(ValueError, match="no texts to embed"):
    embed_texts([], standin, cache_dir=str(tmp_path))
  for kw, message in [
    ({"pooling": "max"}, "pooling 'max'"),
    ({"dtype": "float16"}, "dtype 'float16'"),
    ({"max_length": 600}, "max_length=600 exceeds the 512 positions"),
  ]:
    with pytest.raises(ValueError, match=message):
      embed_texts(["洞調律"], standin, cache_dir=str(tmp_path), progress=False, **kw)
  broken = tmp_path / "broken"
  shutil.copytree(standin, broken)
  with open(broken / "vocab.txt", "a") as f:
    f.write("追加1\n追加2\n")
  with pytest.raises(
    ValueError, match="the tokenizer has 21540 tokens but config.json has vocab_size 21538"
  ):
    embed_texts(["洞調律"], str(broken), cache_dir=str(tmp_path), progress=False)
  os.remove(broken / "vocab.txt")
  os.remove(broken / "tokenizer_config.json")
  with pytest.raises(FileNotFoundError, match="has no tokenizer files"):
    embed_texts(["洞調律"], str(broken), cache_dir=str(tmp_path), progress=False)
  os.remove(broken / "model.safetensors")
  with pytest.raises(FileNotFoundError, match="lacks model.safetensors"):
    embed_texts(["洞調律"], str(broken), cache_dir=str(tmp_path), progress=False)


@pytest.mark.slow
def test_cache_reuses_rows_and_never_serves_a_changed_model(standin, tmp_path, monkeypatch):
  model_dir = str(tmp_path / "model")
  shutil.copytree(standin, model_dir)
  monkeypatch.setenv("ECG_CONTRASTIVE_CACHE", str(tmp_path / "cache"))
  first = embed_texts(REPORTS, model_dir, progress=False)
  assert sorted(os.listdir(tmp_path / "cache")) == sorted(
    f"{first_key}.{ext}"
    for first_key in {n.split(".")[0] for n in os.listdir(tmp_path / "cache")}
    for ext in ("json", "npy")
  )
  with monkeypatch.context() as m:  # a hit must not touch the model
    m.setattr(
      precompute.text_model,
      "load_text_model",
      lambda *a, **k: pytest.fail("model loaded on a cache hit"),
    )
    again = embed_texts(list(reversed(REPORTS)), model_dir, progress=False)
  assert again.summary["from_cache"] and again.summary["seconds"] < 1.0
  np.testing.assert_array_equal(again.embeddings, first.embeddings)
  assert (
    again.summary["empty"] == first.summary["empty"]
    and again.summary["tokens"] == first.summary["tokens"]
  )
  cls = embed_texts(REPORTS, model_dir, pooling="cls", progress=False)
  assert not cls.summary["from_cache"] and not np.allclose(cls.embeddings, first.embeddings)
  templated = embed_texts(REPORTS, model_dir, template="所見：{}", progress=False)
  assert not templated.summary["from_cache"] and templated.texts == first.texts
  assert not np.allclose(templated.embeddings, first.embeddings)
  write_standin_model(model_dir, seed=1)  # new weights in the same directory
  changed = embed_texts(REPORTS, model_dir, progress=False)
  assert not changed.summary["from_cache"]
  assert np.abs(changed.embeddings - first.embeddings).max() > 0.1
  assert len(os.listdir(tmp_path / "cache")) == 8  # four entries: mean, cls, templated, new weights


@pytest.mark.slow
def test_bfloat16_and_pooler_pooling(standin, tmp_path):
  f32 = embed_texts(REPORTS, standin, cache_dir=str(tmp_path), progress=False)
  bf16 = embed_texts(REPORTS, standin, dtype="bfloat16", cache_dir=str(tmp_path), progress=False)
  assert bf16.embeddings.dtype == np.float32
  cosine = (_unit(f32.embeddings) * _unit(bf16.embeddings)).sum(1)
  assert cosine.min() > 0.999 and np.abs(bf16.embeddings - f32.embeddings).max() > 1e-4
  pooler = embed_texts(REPORTS, standin, pooling="pooler", cache_dir=str(tmp_path), progress=False)
  assert np.abs(pooler.embeddings).max() < 1.0  # tanh range


def test_label_prompts_average_normalised_template_embeddings(standin, tmp_path):
  labels, templates = ["心房細動", "左室肥大"], ["{}", "{}を認める。"]
  got = embed_label_prompts(labels, templates, standin, cache_dir=str(tmp_path), progress=False)
  prompts = ["心房細動", "心房細動を認める。", "左室肥大", "左室肥大を認める。"]
  table = embed_texts(prompts, standin, cache_dir=str(tmp_path), progress=False)
  e = _unit(table.embeddings[table.rows(prompts)])
  np.testing.assert_allclose(got, [(e[0] + e[1]) / 2, (e[2] + e[3]) / 2], rtol=1e-6)
  assert 0.5 < np.linalg.norm(got, axis=1).max() < 1.0  # the average is left unnormalised
  with pytest.raises(ValueError, match="'所見' must contain the placeholder"):
    embed_label_prompts(labels, ["所見"], standin, cache_dir=str(tmp_path))


@pytest.mark.slow
def test_standin_embeddings_are_lexical(standin, tmp_path):
  """The demo's premise: a report naming a term lies nearest that term's prompt."""
  terms = term_names()
  reports = embed_texts(
    [f"洞調律。{t}を認める。" for t in terms], standin, cache_dir=str(tmp_path), progress=False
  )
  r = _unit(reports.embeddings[reports.rows([f"洞調律。{t}を認める。" for t in terms])])
  rates = {}
  for name, templates in [
    ("bare", ["{}"]),
    ("default", default.get_config().text.templates),
  ]:  # the demo's
    prompts = _unit(
      embed_label_prompts(terms, templates, standin, cache_dir=str(tmp_path), progress=False)
    )
    rates[name] = float(np.mean((r @ prompts.T).argmax(1) == np.arange(len(terms))))
  assert rates["bare"] >= 0.75 and rates["default"] >= 0.9, rates  # measured 0.786 and 0.959


_WORKER = """
import json, sys
import jax
jax.config.update("jax_cpu_collectives_implementation", "gloo")
jax.distributed.initialize(sys.argv[1], num_processes=2, process_id=int(sys.argv[2]))
import numpy as np
from ecg_contrastive.text.precompute import embed_texts
table = embed_texts(json.loads(sys.argv[3]), sys.argv[4], cache_dir=sys.argv[5], batch_size=2,
                    max_length=32, progress=False)
np.save(sys.argv[6], table.embeddings)
json.dump(table.summary, open(sys.argv[6] + ".json", "w"))
"""


@pytest.mark.slow
def test_two_processes_each_embed_a_share_and_assemble_the_table(standin, tmp_path):
  texts = REPORTS + ["", "あ" * 50, "😀"]
  single = embed_texts(
    texts, standin, batch_size=2, max_length=32, cache_dir=str(tmp_path / "c"), progress=False
  )
  script = tmp_path / "worker.py"
  script.write_text(_WORKER)
  port = 20000 + os.getpid() % 20000
  env = {
    **os.environ,
    "XLA_FLAGS": "--xla_force_host_platform_device_count=2",
    "PYTHONPATH": os.getcwd() + os.pathsep + os.environ.get("PYTHONPATH", ""),
  }
  procs = [
    subprocess.Popen(
      [
        sys.executable,
        str(script),
        f"localhost:{port}",
        str(i),
        json.dumps(texts),
        standin,
        str(tmp_path / f"c{i}"),
        str(tmp_path / f"out{i}.npy"),
      ],
      env=env,
      stdout=subprocess.PIPE,
      stderr=subprocess.STDOUT,
      text=True,
    )
    for i in range(2)
  ]
  for p in procs:
    output, _ = p.communicate(timeout=180)
    assert p.returncode == 0, output[-3000:]
  for i in range(2):
    np.testing.assert_allclose(
      np.load(tmp_path / f"out{i}.npy"), single.embeddings, rtol=1e-5, atol=1e-6
    )
    summary = json.load(open(tmp_path / f"out{i}.npy.json"))
    assert summary["processes"] == 2 and summary["devices"] == 2
    for key in ("unique", "empty", "truncated", "unk_tokens", "texts_with_unk", "tokens"):
      assert summary[key] == single.summary[key], key


def test_text_setup_gives_the_configured_model_or_writes_the_standin(tmp_path):
  """text/setup.text_model_dir: config.text.model_dir as is, else the stand-in of config.text.standin's size, one
  folder per size under config.text.cache_dir, written on first use."""
  from ecg_contrastive import train
  from ecg_contrastive.text import setup

  assert train.embed_texts is setup.embed_texts
  config = default.get_config("tiny")
  config.text.model_dir = "/models/bert"
  assert setup.text_model_dir(config) == "/models/bert"
  config.text.model_dir, config.text.cache_dir = "", str(tmp_path)
  directory = setup.text_model_dir(config)
  kw = config.text.standin.to_dict()
  assert directory == os.path.join(
    str(tmp_path), "standin_bert_ja_" + "_".join(f"{k}{v}" for k, v in sorted(kw.items()))
  )
  with open(os.path.join(directory, "config.json"), encoding="utf-8") as f:
    assert json.load(f)["hidden_size"] == kw["hidden_size"]
