"""The knobs of the entry points as data: `EditConfig` (edit.py, batch.py's jobs) and `TrainConfig`
(train.py), and `train_config`, the training settings of `edit.py --train`.

No method code lives here, only dataclasses whose fields cli.py turns into flags: the
method's stages (refine.py, motion_lora.py), the entry points and the embedded demo (demo/)
all read these configs, and putting them in a module of their own is what lets demo/ and the
stages use them without importing an entry point (tests/test_dependencies.py). The source
stage (source.py) reads its few fields through its own `SourceConfig` instead.
"""

from dataclasses import dataclass

import torch

from cli import knob


# ---------------------------------------------------------------------------------------------
# edit.py: every knob, with the reference default
# ---------------------------------------------------------------------------------------------

@dataclass
class EditConfig:
    # inputs and outputs
    video: str = knob("", "source video (any container/codec PyAV reads)")
    edited_frame: list[str] = knob([], "edited first frame(s) of the video; one edit per image")
    lora: list[str] = knob([], "motion LoRA per clip from train.py, in clip order")
    train: bool = knob(False, "train each clip's motion LoRA first (instead of --lora)")
    weights: str = knob("", "diffusers folder or svd*.safetensors (default: Hugging Face cache)")
    plain_i2v: bool = knob(False, "plain SVD image-to-video from --edited-frame; no video")
    out_dir: str = knob("runs", "each run writes a timestamped folder here")
    # the source video and its clips (docs/method.md §2)
    sample_fps: float = knob(2.5, "frames per second taken from the video (reference 2.5)")
    start_t: float = knob(0.0, "first second of the video used")
    end_t: float = knob(0.0, "last second used; 0 = to the end")
    num_frames: int = knob(14, "frames per clip F (SVD 14, SVD-XT 25)", minimum=1)
    overlap: int = knob(1, "frames shared by consecutive clips (the next clip starts at the "
                           "first shared one, conditioned on its edit)", minimum=1)
    max_clips: int = knob(0, "edit at most this many clips; 0 = all", minimum=0)
    height: int = knob(0, "working height; 0 = from the video's aspect ratio at the model's "
                          "own area (SVD: 576x1024 for 16:9); sides multiples of 64 for SVD",
                       minimum=0)
    width: int = knob(0, "working width; 0 = as --height says", minimum=0)
    fit: str = knob("crop", "crop | pad: a video whose aspect differs from --height/--width is "
                            "cropped (centre) or padded (black bars)")
    # sampling (docs/method.md §5)
    steps: int = knob(25, "Euler steps N over the Karras sigmas, inversion and editing",
                       minimum=1)
    min_guidance: float = knob(1.0, "classifier-free guidance of the first frame")
    max_guidance: float = knob(2.0, "... rising linearly to this at the last frame (ref. 2.0)")
    fps: int = knob(7, "frame rate id given to the model (it sees fps - 1), all phases")
    motion_bucket_id: int = knob(127, "SVD's motion conditioning")
    noise_aug_strength: float = knob(0.02, "pixel noise on the conditioning image")
    lora_scale: float = knob(1.0, "motion LoRA scale while editing")
    # appearance refinement (docs/method.md §6)
    beta1: float = knob(0.5, "temporal selector: source everywhere before int(beta1 N); "
                             "presets: local 0.5/0.8, style 0.8/0.9, big shape change 0.4/0.5")
    beta2: float = knob(0.8, "temporal selector: own everywhere from int(beta2 N)")
    coarse_up: int = knob(2, "up-group temporal layers kept from the source in the middle stage "
                             "(reference 2; 3 = all layers at 1/4 scale)")
    mask_threshold_first: float = knob(0.35, "difference-mask threshold tau at the first frame")
    mask_threshold_last: float = knob(0.35, "... rising linearly to this at the last frame")
    no_spatial_matching: bool = knob(False, "ablation: spatial self-attention left alone")
    no_temporal_selector: bool = knob(False, "ablation: temporal self-attention left alone")
    no_skip_interval: bool = knob(False, "ablation: later clips do not attend to clip 0")
    no_sarp: bool = knob(False, "ablation: no smooth-area random perturbation")
    sarp_threshold: float = knob(1e-3, "SARP: Sobel gradient at or below which a pixel is flat")
    sarp_noise_scale: float = knob(5e-3, "SARP: std of the noise added to flat pixels")
    source_attention: str = knob("recompute", "recompute | memory | disk: where the source "
                                              "attention comes from (same result)")
    skip_interval_kv: str = knob("recompute", "recompute | memory: clip 0's K/V for later clips "
                                              "rerun per step (bounded memory) or all kept "
                                              "(~36 GB/branch at 576x1024 bf16; same result)")
    chain: str = knob("latent", "latent | frame: the next clip's image latent is the shared "
                                "frame's denoised latent (the reference) or its re-encoding")
    invert_at_run_dtype: bool = knob(False, "run the inversion at --dtype (default: float32 "
                                            "whatever --dtype, as the reference)")
    save_masks: bool = knob(False, "write pictures of the spatial difference masks per step")
    # motion LoRA training with --train (train.py has the full set)
    train_steps: int = knob(250, "LoRA training steps per clip with --train", minimum=1)
    lora_rank: int = knob(32, "LoRA rank with --train", minimum=1)
    lora_lr: float = knob(5e-4, "LoRA learning rate with --train")
    no_gradient_checkpointing: bool = knob(False, "with --train: keep activations (faster, "
                                                  "more memory; the same weights)")
    # runtime
    decode_chunk_size: int = knob(8, "frames decoded together (the reference's 8: 14 at once "
                                     "is the peak of a 576x1024 edit, bench/NOTES.md); 0 = all; "
                                     "pieces are decoded as videos of their own")
    encode_chunk_size: int = knob(4, "frames encoded together; 0 = all (same latents; 14 frames "
                                     "at 576x1024 in float32 need ~19 GiB at once)", minimum=0)
    unet_chunk_size: int = knob(0, "frames per transformer call; 0 = all (less memory when small)")
    seed: int = knob(23, "random seed")
    dtype: str = knob("float32", "float32 | bfloat16 | float16")
    device: str = knob("cuda" if torch.cuda.is_available() else "cpu", "cpu | cuda")


# ---------------------------------------------------------------------------------------------
# train.py: the motion LoRA's knobs (docs/method.md §3)
# ---------------------------------------------------------------------------------------------

@dataclass
class TrainConfig:
    video: str = knob("", "source video (any container/codec PyAV reads)")
    weights: str = knob("", "diffusers folder or svd*.safetensors (default: Hugging Face cache)")
    out_dir: str = knob("runs", "each run writes a timestamped folder here")
    resume: str = knob("", "run folder of an interrupted run: continue it with its config")
    # the clips, as edit.py cuts them
    sample_fps: float = knob(2.5, "frames per second taken from the video")
    start_t: float = knob(0.0, "first second of the video used")
    end_t: float = knob(0.0, "last second used; 0 = to the end")
    num_frames: int = knob(14, "frames per clip F", minimum=1)
    overlap: int = knob(1, "frames shared by consecutive clips", minimum=1)
    max_clips: int = knob(0, "train at most this many clips; 0 = all", minimum=0)
    height: int = knob(0, "training height; 0 = as edit.py: the video's aspect ratio at the "
                          "model's own area (the reference trains at 512x896, edits at 576x1024)",
                       minimum=0)
    width: int = knob(0, "training width; 0 = as --height says", minimum=0)
    fit: str = knob("crop", "crop | pad: how frames of another aspect ratio are brought to size")
    # the adapter and its optimiser (docs/method.md §3.2)
    rank: int = knob(32, "LoRA rank r", minimum=1)
    dropout: float = knob(0.1, "dropout on the adapter input (reference: 0.1, after lora_up)")
    steps: int = knob(250, "optimisation steps per clip (the paper's results use 250)",
                       minimum=1)
    lr: float = knob(5e-4, "AdamW learning rate")
    weight_decay: float = knob(1e-2, "AdamW weight decay")
    # conditioning, as in every phase (edit.py)
    fps: int = knob(7, "frame rate id given to the model (it sees fps - 1)")
    motion_bucket_id: int = knob(127, "SVD's motion conditioning")
    noise_aug_strength: float = knob(0.02, "pixel noise on the conditioning image")
    # skip-interval: clip 0's source K/V on the editing schedule
    steps_inversion: int = knob(25, "N of the schedule on which clip 0's K/V are recorded",
                                 minimum=1)
    no_skip_interval: bool = knob(False, "later clips do not attend to clip 0 while training")
    skip_interval_kv: str = knob("recompute", "recompute | memory: clip 0's K/V rerun per step "
                                              "(one forward more per step) or all kept")
    # runtime
    checkpoint_every: int = knob(50, "write a resumable checkpoint every this many steps",
                                  minimum=1)
    export_single_file: bool = knob(False, "also write each LoRA in single-file (sgm) naming")
    no_gradient_checkpointing: bool = knob(False, "keep activations (faster, more memory)")
    encode_chunk_size: int = knob(4, "frames the VAE encodes together; 0 = all (same latents)",
                                  minimum=0)
    seed: int = knob(23, "random seed")
    dtype: str = knob("bfloat16" if torch.cuda.is_available() else "float32",
                      "base weights: float32 | bfloat16 | float16 (adapters stay float32)")
    device: str = knob("cuda" if torch.cuda.is_available() else "cpu", "cpu | cuda")


def train_config(cfg: EditConfig) -> TrainConfig:
    """The training settings of `edit.py --train`: the edit's clips, conditioning and
    schedule, with its --train-steps, --lora-rank, --lora-lr and --no-gradient-checkpointing."""
    return TrainConfig(steps=cfg.train_steps, rank=cfg.lora_rank, lr=cfg.lora_lr, fps=cfg.fps,
                       no_gradient_checkpointing=cfg.no_gradient_checkpointing,
                       motion_bucket_id=cfg.motion_bucket_id,
                       noise_aug_strength=cfg.noise_aug_strength, seed=cfg.seed,
                       num_frames=cfg.num_frames, height=cfg.height, width=cfg.width,
                       sample_fps=cfg.sample_fps, steps_inversion=cfg.steps,
                       skip_interval_kv=cfg.skip_interval_kv, overlap=cfg.overlap, fit=cfg.fit,
                       encode_chunk_size=cfg.encode_chunk_size)
