"""The encoder contract of `wrap`: what legokit reads off a user's module, the shapes it checks at wrap time, the
recurrent layers it makes exportable, batch-independent tokens, text inputs, and the one-line refusals."""

from __future__ import annotations

import pytest
import torch
from torch import nn
from torch.export import Dim

from legokit import ConfigError, EncoderError, load_block, save_block
from legokit.cli.commands import main
from legokit.data.folder import DatasetFolder
from legokit.encoders.recurrent import exportable_copy
from legokit.text.spec import TextSpec
from legokit.wrap import WrapOptions, wrap_file, wrap_module

OPTS = dict(latent=(8, 16), device="cpu", dim_head=16)


class Embedder(nn.Module):
    """Token ids -> embeddings, with an attention mask keyword as Hugging Face text models take."""

    def __init__(self) -> None:
        super().__init__()
        self.embed = nn.Embedding(20, 8)

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        return self.embed(input_ids) * attention_mask.unsqueeze(-1)


class ConvMap(nn.Module):
    """A Conv1d over a sequence of 6-feature tokens, returning its (b, c, t) map."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv1d(6, 5, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(x.transpose(1, 2))


@pytest.mark.parametrize("layer", [nn.LSTM, nn.GRU, nn.RNN])
def test_recurrent_layers_made_exportable_compute_what_torch_computes(layer):
    torch.manual_seed(0)
    module = layer(6, 8, num_layers=2, batch_first=True, bidirectional=True).eval()
    copy, swapped = exportable_copy(module)
    x = torch.randn(3, 5, 6)
    ours, theirs = copy(x), module(x)
    assert swapped == 1
    assert torch.allclose(ours[0], theirs[0], atol=1e-6)
    last_ours, last_theirs = (ours[1][0], theirs[1][0]) if layer is nn.LSTM else (ours[1], theirs[1])
    assert torch.allclose(last_ours, last_theirs, atol=1e-6)


def test_an_lstm_encoder_runs_at_every_length_after_wrapping():
    torch.manual_seed(0)
    module = nn.LSTM(6, 8, batch_first=True)
    block = wrap_module(module, "seq", "binary", (None, 6), **OPTS)
    for tokens in (1, 5, 17):
        x = torch.randn(2, tokens, 6)
        assert torch.allclose(block.encoder(x), module(x)[0], atol=1e-6)


def test_a_token_encoder_without_a_mask_gives_each_sample_the_same_output_in_any_batch():
    torch.manual_seed(0)
    block = wrap_module(ConvMap(), "seq", "survival:4", (None, 6), **OPTS)
    assert block.config.encoder.kwargs["layout"] == "channels"
    x = torch.randn(4, 9, 6)
    mask = torch.arange(9) < torch.tensor([9, 1, 4, 6])[:, None]
    together = block(x, mask)
    for row in range(4):
        n = int(mask[row].sum())
        alone = block(x[row : row + 1, :n], mask[row : row + 1, :n])
        assert torch.allclose(alone[0], together[row], atol=1e-5)


def test_token_ids_and_an_attention_mask_are_read_off_the_module():
    block = wrap_module(Embedder(), "notes", "binary", (None,), **OPTS)
    assert block.config.input_dtype == "int64"
    assert block.config.encoder.kwargs["mask_keyword"] == "attention_mask"
    ids = torch.tensor([[3, 4, 5], [6, 0, 0]])
    mask = torch.tensor([[True, True, True], [True, False, False]])
    assert torch.allclose(block(ids, mask)[1], block(ids[1:, :1], mask[1:, :1])[0], atol=1e-6)


def test_a_module_in_train_mode_is_exported_in_eval_mode_unless_asked():
    torch.manual_seed(0)
    module = nn.Sequential(nn.Linear(4, 8), nn.BatchNorm1d(8), nn.Dropout(0.5)).train()
    block = wrap_module(module, "tab", "binary", (4,), **OPTS)
    assert module.training, "the user's module keeps its mode"
    x = torch.randn(5, 4)
    assert torch.allclose(block.encoder(x), module.eval()(x), atol=1e-6)
    assert torch.allclose(block.encoder(x[:1]), module.eval()(x[:1]), atol=1e-6)


def test_an_output_key_that_is_not_there_names_the_keys():
    class Dict(nn.Module):
        def forward(self, x):
            return {"features": x * 2, "logits": x.sum(-1)}

    with pytest.raises(EncoderError, match="holds features, logits"):
        wrap_module(Dict(), "tab", "binary", (4,), how=WrapOptions(output="hidden"), **OPTS)


def test_a_program_exported_with_a_fixed_batch_is_refused_at_wrap_time(tmp_path):
    path = tmp_path / "static.pt2"
    torch.export.save(torch.export.export(nn.Linear(6, 8), (torch.randn(2, 6),)), path)
    with pytest.raises(EncoderError, match="fails at batch size 1.*dynamic_shapes"):
        wrap_file(path, "tab", "binary", **OPTS)


def test_a_program_with_a_fixed_length_is_refused_with_the_length(tmp_path):
    path = tmp_path / "fixed.pt2"
    program = torch.export.export(nn.Linear(6, 8), (torch.randn(2, 3, 6),), dynamic_shapes=({0: Dim.DYNAMIC},))
    torch.export.save(program, path)
    with pytest.raises(ConfigError, match="--input-shape \\?x6 disagrees with the program's 3x6"):
        wrap_file(path, "seq", "binary", input_shape=(None, 6), **OPTS)


@pytest.mark.parametrize(
    "content, looks",
    [
        (b"# My encoder\n\nTrained on our cohort.\n", "a text file"),
        (b"a,b\n", "a CSV file"),
        (b"hello", "a text file"),
        (b"", "empty file"),
        (bytes(range(200, 256)) * 4, "unknown binary format"),
    ],
)
def test_files_that_are_not_encoders_are_one_line_errors_naming_what_they_look_like(tmp_path, capsys, content, looks):
    path = tmp_path / "encoder.pt"
    path.write_bytes(content)
    assert main(["wrap", str(path), "--modality", "tab", "--device", "cpu"]) == 1
    err = capsys.readouterr().err
    assert looks in err and "Traceback" not in err and len(err.strip().splitlines()) <= 3
    assert "--trust-pickle" not in err
    assert not (tmp_path / "encoder.st").exists()


def test_a_trusted_pickle_whose_class_cannot_be_imported_is_one_line(tmp_path, capsys):
    torch.save(nn.Sequential(nn.Linear(4, 8)), tmp_path / "model.pt")
    data = (tmp_path / "model.pt").read_bytes().replace(b"torch.nn.modules.container", b"torch.nn.modules.containex")
    (tmp_path / "model.pt").write_bytes(data)
    assert main(["wrap", str(tmp_path / "model.pt"), "--modality", "tab", "--input-shape", "4", "--trust-pickle"]) == 1
    err = capsys.readouterr().err
    assert "cannot be imported" in err and "Traceback" not in err


def test_train_block_refuses_flags_that_would_build_another_block(tmp_path, capsys):
    block = wrap_module(nn.Linear(4, 8), "tab", "binary", (4,), **OPTS)
    path = save_block(block, tmp_path / "tab.st")
    assert main(["train", str(tmp_path), "--block", str(path), "--latent", "8x8", "-o", str(tmp_path / "t.st")]) == 1
    assert "--latent" in capsys.readouterr().err


def test_text_is_read_from_id_txt_files_through_the_blocks_tokenizer(tmp_path):
    tokenizers = pytest.importorskip("tokenizers")
    vocab = {"[PAD]": 0, "[UNK]": 1, "high": 2, "low": 3, "bilirubin": 4}
    tokenizer = tokenizers.Tokenizer(tokenizers.models.WordLevel(vocab, unk_token="[UNK]"))
    tokenizer.pre_tokenizer = tokenizers.pre_tokenizers.Whitespace()
    spec = TextSpec(tokenizer.to_str(), max_tokens=3)
    (tmp_path / "notes").mkdir()
    (tmp_path / "notes" / "a.txt").write_text("bilirubin high", encoding="utf-8")
    (tmp_path / "notes" / "b.txt").write_text("\ufeffbilirubin low high low", encoding="utf-8")
    folder = DatasetFolder(tmp_path, {"notes": spec})
    batch = folder.batch(["a", "b", "missing"])["notes"]
    assert batch.x.tolist() == [[4, 2, 0], [4, 3, 2], [0, 0, 0]]
    assert batch.present.tolist() == [True, True, False]


def test_a_text_block_keeps_its_tokenizer_and_reloads_without_the_encoder_class(tmp_path):
    pytest.importorskip("tokenizers")
    block = wrap_module(Embedder(), "notes", "binary", (None,), text=TextSpec('{"model": {}}', 16), **OPTS)
    reloaded = load_block(save_block(block, tmp_path / "notes.st"))
    assert reloaded.config.text == block.config.text
    ids, mask = torch.tensor([[3, 4, 5]]), torch.ones(1, 3, dtype=torch.bool)
    assert torch.equal(reloaded(ids, mask), block.eval()(ids, mask))


def test_predict_refuses_to_overwrite_the_model_or_the_data_folders_files(tmp_path, capsys):
    from legokit.data.bundled import write_pbc

    data = tmp_path / "data"
    write_pbc(data)
    block = wrap_module(nn.Linear(17, 8), "labs", "survival:4", (17,), **OPTS)
    model = save_block(block, tmp_path / "labs.st")
    for target in (model, data / "labels.csv", data / "labs.csv"):
        before = target.read_bytes()
        assert main(["predict", str(model), str(data), "--device", "cpu", "-o", str(target)]) == 1
        assert "refusing to overwrite an input file" in capsys.readouterr().err
        assert target.read_bytes() == before


def test_a_csv_saved_with_a_byte_order_mark_reads_like_any_other(tmp_path):
    (tmp_path / "tab.csv").write_text("id,a,b\n1,0.5,2\n", encoding="utf-8-sig")
    folder = DatasetFolder(tmp_path, {"tab": (2,)})
    assert folder.batch(["1"])["tab"].x.tolist() == [[0.5, 2.0]]


def test_an_encoder_returning_integers_is_refused_with_the_dtype():
    class Thresholds(nn.Module):
        def forward(self, x):
            return (x > 0).long()

    with pytest.raises(EncoderError, match="returns torch.int64 values"):
        wrap_module(Thresholds(), "tab", "binary", (4,), **OPTS)


def test_a_programs_mask_input_takes_the_convention_named_by_mask(tmp_path):
    class Masked(nn.Module):
        def forward(self, x, pad):
            return x * (~pad).unsqueeze(-1)

    dims = {0: Dim.DYNAMIC, 1: Dim.DYNAMIC}
    path = tmp_path / "masked.pt2"
    torch.export.save(
        torch.export.export(
            Masked(), (torch.randn(2, 3, 4), torch.zeros(2, 3, dtype=torch.bool)), dynamic_shapes=(dims, dims)
        ),
        path,
    )
    with pytest.raises(ConfigError, match="second input is pad; say which convention"):
        wrap_file(path, "seq", "binary", **OPTS)
    block = wrap_file(path, "seq", "binary", how=WrapOptions(mask="src_key_padding_mask"), **OPTS)
    x, mask = torch.randn(1, 3, 4), torch.tensor([[True, True, False]])
    tokens, _ = block.encoder.encode_tokens(x, mask)
    assert torch.equal(tokens[0, :2], x[0, :2])


def test_a_hugging_face_folder_whose_weights_do_not_fit_is_refused(tmp_path):
    transformers = pytest.importorskip("transformers")
    from safetensors.torch import load_file, save_file

    config = transformers.BertConfig(
        vocab_size=19,
        hidden_size=16,
        num_hidden_layers=1,
        num_attention_heads=2,
        intermediate_size=32,
        max_position_embeddings=32,
    )
    transformers.BertModel(config).save_pretrained(tmp_path / "bert")
    weights = load_file(tmp_path / "bert" / "model.safetensors")
    save_file(dict(list(weights.items())[:5]), tmp_path / "bert" / "model.safetensors", metadata={"format": "pt"})
    (tmp_path / "bert" / "tokenizer.json").write_text("{}", encoding="utf-8")
    with pytest.raises(EncoderError, match="tensor\\(s\\) missing.*random weights"):
        wrap_file(tmp_path / "bert", "notes", "binary", **OPTS)


def test_wrap_never_writes_over_a_file_of_the_folder_it_wraps(tmp_path, capsys):
    (tmp_path / "bert").mkdir()
    (tmp_path / "bert" / "config.json").write_text('{"model_type": "bert"}', encoding="utf-8")
    target = tmp_path / "bert" / "config.json"
    assert main(["wrap", str(tmp_path / "bert"), "--modality", "notes", "-o", str(target)]) == 1
    assert target.read_text(encoding="utf-8") == '{"model_type": "bert"}'
    assert "refusing to overwrite an input file" in capsys.readouterr().err


@pytest.mark.parametrize("command", ["train", "eval"])
def test_train_and_eval_refuse_to_write_into_their_data_folder(tmp_path, capsys, command):
    from legokit.data.bundled import write_pbc

    data = tmp_path / "data"
    write_pbc(data)
    model = save_block(wrap_module(nn.Linear(17, 8), "labs", "survival:4", (17,), **OPTS), tmp_path / "labs.st")
    target = data / "labels.csv"
    before = target.read_bytes()
    args = (
        ["train", str(data), "--modality", "labs", "-o", str(target)]
        if command == "train"
        else ["eval", str(model), str(data), "--json", str(target)]
    )
    assert main(args) == 1
    assert "refusing to overwrite an input file" in capsys.readouterr().err
    assert target.read_bytes() == before
