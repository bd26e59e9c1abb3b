"""Many edits on many processes: a job list (JSON Lines) of edit.py runs, under torchrun.

    python batch.py --jobs jobs.jsonl --out-dir OUT --weights W
    torchrun --nproc-per-node 8 batch.py --jobs jobs.jsonl --out-dir OUT --weights W --device cuda

One job per line: the `EditConfig` knobs of edit.py under their field names plus `name`, the
job's output folder OUT/<name> (docs/batch.md has the format, the resume rules and the SLURM
recipe). Every line is checked before anything is loaded or written. Each process (a torchrun
rank, or the only one) loads the model once and takes the next job from a counter in the
process group's key-value store, so a slow job never holds up the others' queues. A job is
written into a hidden temporary folder in OUT and renamed to OUT/<name> only once its outputs and
its completion record (done.json) are complete: OUT/<name> is never half written, and a rerun
of the same command skips it. A failing job (unreadable video, LoRA mismatch, out of memory, any
exception) leaves OUT/<name>.failed.json with its one-line error, and its process goes on; a
rerun skips it too unless --retry-failed. Several nodes: OUT must be on a filesystem every node
sees (the rename is atomic there: POSIX rename within one folder), and one batch at a time may
use an OUT folder.

Seeds belong to jobs (each line's `seed`, default EditConfig's), never to ranks: a job gives the
same files whichever rank runs it, alone or in a batch. On the CPU the float results depend on
the number of threads (docs/batch.md, "Threads"); --threads fixes it per process, and done.json
records it.
"""

import argparse
import contextlib
import enum
import gc
import json
import os
import shutil
import socket
import sys
import time
import traceback
from dataclasses import asdict, dataclass
from datetime import timedelta
from pathlib import Path

import torch
import torch.distributed as dist
from tqdm import tqdm

from batch_jobs import FAILED_SUFFIX, SUMMARY, Job, JobListError, read_jobs
from configs import EditConfig
from edit import check_inputs, read_inputs, run_edit
from lora import LoRAError, lora_layers, remove_lora
from media import InputError
from safefiles import atomic_write
from svd.backbone import SVDBackbone
from svd.weights import SVD, WeightsError, find_weights, load_svd


# ---------------------------------------------------------------------------------------------
# The output folder: OUT/<name>/done.json, OUT/<name>.failed.json, hidden temporaries
# ---------------------------------------------------------------------------------------------

TEMP_PREFIX = ".tmp-"               # OUT/.tmp-<name>-<host>-<pid>: a job being written


class Status(enum.Enum):
    DONE = "done"           # finished in this run
    FAILED = "failed"       # raised in this run (its error: the row, OUT/<name>.failed.json)
    SKIPPED = "skipped"     # finished or failed in an earlier run: nothing was done


def done_record(out: Path, name: str) -> Path:
    return out / name / "done.json"


def failed_record(out: Path, name: str) -> Path:
    return out / f"{name}{FAILED_SUFFIX}"


def remove_leftovers(out: Path) -> list[str]:
    """Delete the temporary folders of jobs that were cut short (a killed run); their names."""
    leftovers = sorted(p for p in out.glob(TEMP_PREFIX + "*") if p.is_dir())
    for path in leftovers:
        shutil.rmtree(path, ignore_errors=True)
    return [p.name for p in leftovers]


def write_json(path: Path, record: dict) -> None:
    atomic_write(path, lambda tmp: tmp.write_text(json.dumps(record, indent=2) + "\n"))


# ---------------------------------------------------------------------------------------------
# The processes: rank, store, barrier (one process without torchrun)
# ---------------------------------------------------------------------------------------------

@dataclass
class Group:
    """This process's place in the batch. `store` is the key-value store the ranks share (the
    torchrun rendezvous' TCPStore; an in-process HashStore for a lone process): the counter
    `next` hands out job indices, `finished` counts jobs accounted for, `row/<i>` holds job
    i's summary row for rank 0."""
    rank: int
    world_size: int
    local_rank: int
    launched: bool                  # by torchrun (else one process alone, no process group)
    store: dist.Store | None = None
    backend: str | None = None      # of the process group, once joined

    @classmethod
    def from_environment(cls) -> "Group":
        """RANK/WORLD_SIZE/LOCAL_RANK as torchrun sets them; absent: one process alone."""
        if "WORLD_SIZE" not in os.environ:
            return cls(0, 1, 0, launched=False)
        return cls(int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"]),
                   int(os.environ.get("LOCAL_RANK", 0)), launched=True)

    def join(self, device: str) -> None:
        """Join the process group: gloo on the CPU, nccl on CUDA. The store is the
        rendezvous' own (MASTER_ADDR/PORT from torchrun); the jobs' keys and the process
        group's live under separate prefixes in it."""
        if not self.launched:
            self.store = dist.HashStore()
            return
        # Generous: ranks wait for each other only at the start and the end, but the TCPStore
        # client's own operations use this timeout too.
        timeout = timedelta(hours=2)
        store, _, _ = next(dist.rendezvous("env://", timeout=timeout))
        self.backend = "nccl" if device.startswith("cuda") else "gloo"
        dist.init_process_group(self.backend, store=dist.PrefixStore("process_group", store),
                                rank=self.rank, world_size=self.world_size, timeout=timeout)
        self.store = dist.PrefixStore("batch", store)

    def barrier(self) -> None:
        if self.backend == "nccl":
            dist.barrier(device_ids=[self.local_rank])
        elif self.backend is not None:
            dist.barrier()

    def leave(self) -> None:
        if self.backend is not None:
            dist.destroy_process_group()

    def claim(self) -> int:
        """The index of the next job nobody has taken (atomic across ranks)."""
        return self.store.add("next", 1) - 1

    def report(self, index: int, row: dict) -> None:
        self.store.set(f"row/{index}", json.dumps(row))
        self.store.add("finished", 1)

    def finished(self) -> int:
        return self.store.add("finished", 0)

    def rows(self, count: int) -> list[dict]:
        return [json.loads(self.store.get(f"row/{i}")) for i in range(count)]


# ---------------------------------------------------------------------------------------------
# One job
# ---------------------------------------------------------------------------------------------

@dataclass
class Batch:
    """What every job of this process shares."""
    out: Path
    weights: str
    dtype: str
    device: str             # this rank's device (cuda:LOCAL_RANK on CUDA)
    retry_failed: bool
    group: Group
    svd: SVD | None = None

    def model(self) -> SVD:
        """The model, loaded on first use (a rerun with nothing left to do never loads it)."""
        if self.svd is None:
            self.svd = load_svd(self.weights, getattr(torch, self.dtype), self.device)
        return self.svd


def reset_model(svd: SVD) -> None:
    """The model as loaded, whatever the job before did: --train and --lora jobs leave their
    adapters in the U-Net (remove_lora puts the original Linears back, weights untouched)."""
    if lora_layers(svd.unet):
        remove_lora(svd.unet)
    svd.unet.eval()
    svd.unet.gradient_checkpointing = False


def one_line(error: BaseException) -> str:
    """An exception -> one line for the summary: the user-facing message of input errors, the
    type and first line of anything else."""
    if isinstance(error, torch.OutOfMemoryError):
        text = f"out of memory: {error}"
    elif isinstance(error, (InputError, LoRAError, WeightsError)):
        text = str(error)
    else:
        text = f"{type(error).__name__}: {error}"
    lines = text.strip().splitlines() or [type(error).__name__]
    return lines[0][:500]


def run_job(job: Job, batch: Batch, log) -> dict:
    """Run one job (or see that an earlier run did) -> its summary row."""
    out, rank = batch.out, batch.group.rank
    row = {"job": job.name, "line": job.line, "rank": rank}
    final = out / job.name
    if done_record(out, job.name).is_file():
        earlier = json.loads(done_record(out, job.name).read_text())
        changed = earlier.get("job") != job.spec
        return row | {"status": Status.SKIPPED.value, "seconds": 0.0, "output": str(final),
                      "note": "done earlier" + ("; its job line has changed since (delete the "
                                                "folder to rerun it)" if changed else "")}
    if failed_record(out, job.name).is_file() and not batch.retry_failed:
        earlier = json.loads(failed_record(out, job.name).read_text())
        return row | {"status": Status.SKIPPED.value, "seconds": 0.0, "error": earlier["error"],
                      "note": "failed earlier; --retry-failed reruns it"}

    start = time.perf_counter()
    # Unique across nodes and runs (a killed run's leftover is removed at the next start).
    tmp = out / f"{TEMP_PREFIX}{job.name}-{socket.gethostname()}-{os.getpid()}"
    tmp.mkdir()
    cfg = EditConfig(**job.knobs, weights=batch.weights, dtype=batch.dtype,
                     device=batch.device, out_dir=str(out))
    try:
        if final.exists():
            raise InputError(f"{final} exists but holds no done.json: not written by batch.py "
                             "(move it away to run this job)")
        svd = batch.model()
        reset_model(svd)
        torch.manual_seed(cfg.seed)      # the job's seed for anything drawing on the global RNG
        # The job's own output (progress bars, "wrote ...") goes to its log, not the console.
        with open(tmp / "log.txt", "w") as job_log, contextlib.redirect_stdout(job_log), \
                contextlib.redirect_stderr(job_log):
            backbone = SVDBackbone.for_run(svd, cfg)        # the job's micro-conditioning
            inputs = read_inputs(cfg, backbone, check_inputs(cfg))
            run_edit(backbone, cfg, inputs, tmp)
        seconds = time.perf_counter() - start
        write_json(tmp / "done.json", {
            "job": job.spec, "line": job.line, "seconds": round(seconds, 3), "rank": rank,
            "host": socket.gethostname(), "threads": torch.get_num_threads(),
            "torch": torch.__version__, "config": asdict(cfg)})
        os.rename(tmp, final)            # atomic: OUT/<name> appears complete or not at all
        failed_record(out, job.name).unlink(missing_ok=True)      # a retried job's old error
        return row | {"status": Status.DONE.value, "seconds": round(seconds, 3),
                      "output": str(final)}
    except Exception as e:               # any failure of this job; KeyboardInterrupt stops all
        error, details = one_line(e), traceback.format_exc()
    shutil.rmtree(tmp, ignore_errors=True)
    if batch.device.startswith("cuda"):
        gc.collect()                     # the failed job's tensors went with its traceback
        torch.cuda.empty_cache()
    seconds = time.perf_counter() - start
    write_json(failed_record(out, job.name), {
        "job": job.spec, "line": job.line, "error": error, "seconds": round(seconds, 3),
        "rank": rank, "host": socket.gethostname(), "traceback": details})
    log(f"{job.name}: failed: {error}")
    return row | {"status": Status.FAILED.value, "seconds": round(seconds, 3), "error": error}


# ---------------------------------------------------------------------------------------------
# The summary (rank 0, after every rank has finished)
# ---------------------------------------------------------------------------------------------

def write_summary(out: Path, rows: list[dict]) -> None:
    atomic_write(out / SUMMARY,
                 lambda tmp: tmp.write_text("".join(json.dumps(r) + "\n" for r in rows)))


def format_table(rows: list[dict]) -> str:
    width = max(len("job"), *(len(r["job"]) for r in rows))
    lines = [f"{'job':{width}s}  {'status':7s}  {'rank':>4s}  {'seconds':>8s}  output / error"]
    for r in rows:
        detail = r.get("output") or r.get("error", "")
        note = f"  ({r['note']})" if r.get("note") and r["status"] == Status.SKIPPED.value else ""
        lines.append(f"{r['job']:{width}s}  {r['status']:7s}  {r['rank']:4d}  "
                     f"{r['seconds']:8.1f}  {detail}{note}")
    counts = {s.value: sum(r["status"] == s.value for r in rows) for s in Status}
    lines.append(", ".join(f"{n} {s}" for s, n in counts.items()))
    return "\n".join(lines)


# ---------------------------------------------------------------------------------------------
# Entry point
# ---------------------------------------------------------------------------------------------

def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        prog="python batch.py", description=__doc__.split("\n\n")[0],
        epilog="Under torchrun, every rank runs this same command (RANK, WORLD_SIZE, LOCAL_RANK "
               "and MASTER_ADDR/PORT come from torchrun). The job list's format and the "
               "resume rules: docs/batch.md.")
    p.add_argument("--jobs", type=Path, required=True, help="the job list: JSON Lines, one job "
                   "per line (relative paths in it are read from its folder)")
    p.add_argument("--out-dir", type=Path, required=True,
                   help="every job writes OUT/<name>; summary.jsonl at the end (shared by all "
                        "nodes)")
    p.add_argument("--weights", default="",
                   help="diffusers folder or svd*.safetensors (default: Hugging Face cache)")
    p.add_argument("--dtype", default="float32", choices=("float32", "bfloat16", "float16"))
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu",
                   choices=("cpu", "cuda"), help="cuda: each rank uses cuda:LOCAL_RANK")
    p.add_argument("--threads", type=int, default=0,
                   help="CPU threads per process (default: OMP_NUM_THREADS, which torchrun sets "
                        "to 1, else torch's own choice); float results on the CPU depend on it")
    p.add_argument("--retry-failed", action="store_true",
                   help="rerun the jobs an earlier run recorded as failed")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    group = Group.from_environment()
    say = print if group.rank == 0 else (lambda *a, **k: None)      # one copy of each message
    # Everything that can be wrong with the command is found before any process waits on
    # another, loads weights or writes a file.
    try:
        jobs = read_jobs(args.jobs)
        if args.out_dir.exists() and not args.out_dir.is_dir():
            raise JobListError(f"--out-dir {args.out_dir}: not a folder")
        weights = find_weights(args.weights)
        if not Path(weights).expanduser().exists():
            raise WeightsError(f"{weights}: no such file or folder")
    except (JobListError, WeightsError) as e:
        say(f"error: {e}", file=sys.stderr)
        return 2
    out = args.out_dir.resolve()
    if args.threads > 0:
        torch.set_num_threads(args.threads)
    device = args.device
    if device == "cuda":
        device = f"cuda:{group.local_rank}"
        torch.cuda.set_device(group.local_rank)
    batch = Batch(out, weights, args.dtype, device, args.retry_failed, group)

    # The model, once per process, before joining the others (a bad weights file ends every
    # rank alike), unless an earlier run has left nothing to do.
    pending = [j for j in jobs if not done_record(out, j.name).is_file()
               and (args.retry_failed or not failed_record(out, j.name).is_file())]
    if pending:
        try:
            batch.model()
        except WeightsError as e:
            say(f"error: {e}", file=sys.stderr)
            return 2

    group.join(device)
    if group.rank == 0:
        out.mkdir(parents=True, exist_ok=True)
        for name in remove_leftovers(out):
            print(f"removed {out / name}: a job cut short by an earlier run")
        print(f"{len(jobs)} jobs ({len(pending)} to run) on {group.world_size} process(es), "
              f"{device}, {torch.get_num_threads()} CPU thread(s) each; output in {out}")
    group.barrier()                      # no rank writes before the leftovers are gone

    bar = tqdm(total=len(jobs), desc="jobs", unit="job", disable=group.rank != 0)
    log = bar.write if group.rank == 0 else (lambda text: print(f"[rank {group.rank}] {text}"))
    while (index := group.claim()) < len(jobs):
        row = run_job(jobs[index], batch, log)
        group.report(index, row)
        bar.update(group.finished() - bar.n)       # the other ranks' jobs too
    # The last jobs may still be running elsewhere: wait for them, rank 0 showing progress.
    while (finished := group.finished()) < len(jobs):
        bar.update(finished - bar.n)
        time.sleep(0.5)
    bar.update(len(jobs) - bar.n)
    bar.close()
    group.barrier()

    if group.rank == 0:
        rows = group.rows(len(jobs))
        write_summary(out, rows)
        print(format_table(rows))
        print(f"summary: {out / SUMMARY}")
    group.leave()
    return 0


if __name__ == "__main__":
    sys.exit(main())
