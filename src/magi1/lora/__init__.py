"""LoRA for the MAGI-1 DiT: train adapters on your own clips (`magi1 train lora`), load them at inference.

    adapters.py      peft adapters on the DiT: add, save, read, check against the model, attach, scale, fuse
    dataset.py       a folder of videos / images with same-name .txt captions: scanned, every problem reported
    buckets.py       size buckets and whole-chunk segments
    cache.py         VAE latents and T5 embeddings computed once, kept on disk, reused
    trainer.py       the MAGI-1 objective on cached data (LoRA or full fine-tuning), resumable
    samples.py       sample videos during training, the loss curve PNG
    pipeline_api.py  `pipe.load_lora(...)`, `set_lora_scale`, `fuse_lora`, `unload_lora`
    cli.py           `magi1 train lora`

The memory a run needs (printed before it starts, and by `magi1 plan --train lora`) is memory/training.py.
"""
