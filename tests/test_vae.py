"""VAE: structure at the released size, numerical parity with diffusers on random weights, and
chunked decoding (docs/svd.md §2, §2.4)."""

from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from bench.oracles import randomize_
from svd.config import VAEConfig
from svd.vae import VAE
from tests.helpers import parameter_count, read_key_table


# VAEConfig.tiny() has one resnet per level, and then diffusers' decoder mid block never runs
# its attention; two per level (as released) runs resnet, attention, resnet.
TINY2 = VAEConfig(block_out_channels=(32, 64), layers_per_block=2)


def tiny_pair(tmp_path, seed: int = 1, cfg: VAEConfig = VAEConfig.tiny()):
    """A randomised diffusers oracle at `cfg` and our VAE loaded (strictly) from its saved
    safetensors file, both in eval mode."""
    from diffusers import AutoencoderKLTemporalDecoder

    oracle = AutoencoderKLTemporalDecoder(
        in_channels=cfg.in_channels, out_channels=cfg.out_channels,
        down_block_types=("DownEncoderBlock2D",) * len(cfg.block_out_channels),
        block_out_channels=cfg.block_out_channels, layers_per_block=cfg.layers_per_block,
        latent_channels=cfg.latent_channels)
    # Every parameter random (norm scales around 1, mix factors around 0), so no layer is the
    # identity and a wrong one shows up in the output.
    randomize_(oracle.eval(), seed=seed)
    save_file(oracle.state_dict(), tmp_path / "vae.safetensors")
    ours = VAE(cfg).eval()
    ours.load_state_dict(load_file(tmp_path / "vae.safetensors"), strict=True)
    return oracle, ours


def test_full_size_structure_matches_released_checkpoint():
    with torch.device("meta"):
        vae = VAE(VAEConfig())
    ours = {k: list(v.shape) for k, v in vae.state_dict().items()}
    assert ours == read_key_table("diffusers_vae.tsv")   # 374 tensors, names and shapes
    assert parameter_count(vae) == 97_742_847


@pytest.mark.parametrize("cfg", [VAEConfig.tiny(), TINY2], ids=["tiny", "tiny2"])
def test_encode_parity_with_diffusers_tiny_fp32(tmp_path, cfg):
    torch.manual_seed(0)
    oracle, ours = tiny_pair(tmp_path, cfg=cfg)
    x = torch.rand(2, 3, 32, 32) * 2 - 1                 # images in [-1, 1]
    with torch.no_grad():
        posterior = oracle.encode(x).latent_dist
        mean, logvar = ours.posterior(x)
        encoded = ours.encode(x)
    diff = (mean - posterior.mean).abs().max().item()
    print(f"VAE encode parity, layers_per_block={cfg.layers_per_block}: max abs diff {diff:.2e} (mean std {posterior.mean.std():.3f})")
    assert posterior.mean.std() > 0.1                    # random weights give a non-trivial output
    assert diff <= 1e-4, diff                            # fp32 round-off only
    assert (logvar - posterior.logvar).abs().max() <= 1e-4
    assert torch.equal(encoded, mean)


@pytest.mark.parametrize("cfg", [VAEConfig.tiny(), TINY2], ids=["tiny", "tiny2"])
def test_decode_parity_with_diffusers_tiny_fp32(tmp_path, cfg):
    torch.manual_seed(0)
    oracle, ours = tiny_pair(tmp_path, cfg=cfg)
    B, F = 2, 3
    z = torch.randn(B * F, 4, 8, 8)                      # two videos of three frames
    with torch.no_grad():
        expected = oracle.decode(z, num_frames=F).sample
        got = ours.decode(z, num_frames=F)
    diff = (got - expected).abs().max().item()
    print(f"VAE decode parity, layers_per_block={cfg.layers_per_block}: max abs diff {diff:.2e} (output std {expected.std():.3f})")
    assert got.shape == (B * F, 3, 16, 16)
    assert expected.std() > 0.1
    assert diff <= 1e-4, diff                            # fp32 round-off only


def test_chunked_decoding(tmp_path):
    torch.manual_seed(0)
    oracle, ours = tiny_pair(tmp_path, seed=2)
    F, c = 5, 2
    z = torch.randn(F, 4, 8, 8)                          # one video of five frames
    with torch.no_grad():
        full = ours.decode(z, num_frames=F)
        # A chunk covering the whole video is the unchunked decode, bit for bit.
        assert torch.equal(ours.decode(z, num_frames=F, chunk_size=F), full)
        assert torch.equal(ours.decode(z, num_frames=F, chunk_size=F + 3), full)

        # Smaller chunks: what the diffusers pipeline does with decode_chunk_size (frames
        # 0-1, 2-3, 4 decoded as three videos of their own).
        expected = torch.cat([oracle.decode(z[i:i + c], num_frames=len(z[i:i + c])).sample
                              for i in range(0, F, c)])
        chunked = ours.decode(z, num_frames=F, chunk_size=c)
    diff = (chunked - expected).abs().max().item()
    print(f"VAE chunked decode parity: max abs diff {diff:.2e}")
    assert diff <= 1e-4, diff
    # ...and it is a different function: temporal norms and convs see only the chunk.
    assert (chunked - full).abs().max() > 1e-3


def test_chunked_decoding_chunks_each_video_separately(tmp_path):
    torch.manual_seed(0)
    oracle, ours = tiny_pair(tmp_path, seed=3)
    B, F, c = 2, 3, 2
    z = torch.randn(B * F, 4, 8, 8)
    with torch.no_grad():
        # Per video: frames 0-1, then frame 2; never a chunk that mixes two videos.
        expected = torch.cat([oracle.decode(z[b * F + i:b * F + min(i + c, F)],
                                            num_frames=min(c, F - i)).sample
                              for b in range(B) for i in range(0, F, c)])
        got = ours.decode(z, num_frames=F, chunk_size=c)
    assert (got - expected).abs().max() <= 1e-4          # fp32 round-off only


def test_chunked_encoding_gives_the_same_latents():
    # The encoder has no temporal layers: encode_video in chunks (what bounds the peak at
    # 576x1024, bench/NOTES.md) must equal encoding every frame at once. Demo weights, 7 frames
    # so that the last chunk is short.
    from svd.latents import encode_video
    from svd.weights import load_svd

    svd = load_svd(Path(__file__).resolve().parents[1] / "demo" / "weights")
    frames = torch.rand(7, 3, 64, 64, generator=torch.Generator().manual_seed(0)) * 2 - 1
    with torch.no_grad():
        whole = encode_video(svd, frames)
        for chunk in (1, 3, 4, 7, 9):
            got = encode_video(svd, frames, chunk)
            assert got.shape == whole.shape == (1, 7, 4, 16, 16)
            assert (got - whole).abs().max() <= 1e-6, chunk
