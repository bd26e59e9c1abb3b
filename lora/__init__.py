"""LoRA for any nn.Module (lora/lora.py); which layers get one is the backbone's rule
(`Backbone.is_lora_target`, backbone.py)."""

from lora.lora import (LoRAError, LoRALinear, add_lora, export_single_file, load_lora,
                       load_lora_files, load_lora_state_dict, lora_layers, lora_parameters,
                       lora_scale, lora_state_dict, merge_lora, read_lora_metadata, remove_lora,
                       save_lora, set_lora_scale)

__all__ = ["LoRAError", "LoRALinear", "add_lora", "export_single_file", "load_lora",
           "load_lora_files", "load_lora_state_dict", "lora_layers", "lora_parameters",
           "lora_scale", "lora_state_dict", "merge_lora", "read_lora_metadata", "remove_lora",
           "save_lora", "set_lora_scale"]
