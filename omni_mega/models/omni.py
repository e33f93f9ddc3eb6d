"""OmniModel: vision tower + connector (first pipeline stage only) feeding megatron's GPTModel.

On the first pipeline stage the text embeddings are computed with the LLM's own embedding layer, the merged visual
tokens (ViT -> projector or Ovis visual tokenizer) replace the image placeholder tokens, indicator rows replace the
indicator tokens (VET), and the result goes to GPTModel as `decoder_input` (megatron `[s, b, h]`, scattered along s
under sequence parallelism). Later stages are plain GPTModel chunks. A micro-batch without images still runs a tiny
dummy image through the vision tower and connector and adds it with weight 0, so every trainable parameter is in the
autograd graph whatever the batch holds (DDP buffers and pipeline stages then never wait on a missing gradient).

Audio is a second modality placed the same way: the audio encoder's states, pooled and projected, replace the audio
placeholder tokens (one per pooled frame, `model.audio.audio_token_id`), with a dummy clip when a batch has none.
Stages that train a part alone (`objective: ctc | classify | rvq | talker | contrastive`) call
`forward(..., task=NAME)`, which runs that part and its head only (`run_task`); those need the whole model on one
pipeline stage.
"""

from __future__ import annotations

import torch
from megatron.core import tensor_parallel
from megatron.core.models.gpt import GPTModel
from megatron.core.packed_seq_params import PackedSeqParams
from megatron.core.transformer.module import MegatronModule
from torch import nn

from omni_mega.config import ConnectorConfig
from omni_mega.models.groups import ModuleGroup, llm_groups
from omni_mega.models.audio.encoder import pool_frames
from omni_mega.models.vision.merge import check_placeholders
from omni_mega.models.vision.vit import VisionTransformer


class OmniModel(MegatronModule):
    """One model chunk: `llm` (GPTModel) plus, where `llm.pre_process`, `vit` and `connector`.

    connector: a `Projector` (kind "mlp") or a `VisualTokenizer` (kind "vet"), mapping [N, vit.out_features] to
    [N, llm hidden].
    """

    def __init__(self, llm: GPTModel, vit: VisionTransformer | None, connector: nn.Module | None,
                 connector_cfg: ConnectorConfig, vit_num_layers: int, merge_size: int = 2, *,
                 mrope: bool = False, parts: dict | None = None) -> None:
        super().__init__(config=llm.config)
        self.llm, self.vit, self.connector = llm, vit, connector
        self.pre_process, self.post_process = llm.pre_process, llm.post_process
        self.kind = connector_cfg.kind
        self.image_token_id = connector_cfg.image_token_id
        self.indicator_token_ids = list(connector_cfg.indicator_token_ids)
        self.vit_num_layers, self.merge_size = vit_num_layers, merge_size
        self.mrope = mrope  # the LLM takes Qwen2-VL 3D positions, computed here from the placeholders
        if self.pre_process and (vit is None) != (connector is None):
            raise ValueError("OmniModel: the first pipeline stage needs both vit and connector")
        self._set_parts(parts or {})

    # ---- megatron plumbing ---------------------------------------------------------------------------------------
    def set_input_tensor(self, input_tensor) -> None:
        self.llm.set_input_tensor(input_tensor)

    # megatron's schedules and finalize_model_grads read these from the outermost module that has pre_process.
    @property
    def model_type(self):
        return self.llm.model_type

    @property
    def share_embeddings_and_output_weights(self) -> bool:
        return self.llm.share_embeddings_and_output_weights

    def shared_embedding_or_output_weight(self):
        return self.llm.shared_embedding_or_output_weight()

    @property
    def special_token_ids(self) -> list[int]:
        return [self.image_token_id, *self.indicator_token_ids] + \
            ([self.audio_cfg.audio_token_id] if self.audio_cfg is not None else [])

    def _set_parts(self, parts: dict) -> None:
        """The audio, speech, classifier and contrastive parts (`models.factory`): audio (AudioEncoder),
        audio_projector, ctc_head, classifier, codec, talker, towers (`models.contrastive.ContrastiveTowers`) (modules,
        None where absent or off the first pipeline stage), audio_cfg, talker_layers and contrastive (from the config,
        known on every stage)."""
        self.audio_cfg = parts.get("audio_cfg")
        self.talker_layers = int(parts.get("talker_layers", 0))
        # the contrastive pre-training towers (models.contrastive): configured (`contrastive`, known on every stage)
        self.contrastive = bool(parts.get("contrastive", False)) or parts.get("towers") is not None
        for name in ("audio", "audio_projector", "ctc_head", "classifier", "codec", "talker", "towers"):
            setattr(self, name, parts.get(name))

    def _part_groups(self) -> dict:
        a, t = self.audio, self.talker
        audio_layers = {layer.layer_number - 1: layer for layer in a.block.layers} if a is not None else {}
        talker_layers = {layer.layer_number - 1: layer for layer in t.block.layers} if t is not None else {}
        some = lambda *m: ModuleGroup([x for x in m if x is not None])  # noqa: E731
        towers = {}
        if self.contrastive:  # image_pooler, text_tower, caption_decoder (empty on a later pipeline stage)
            towers = {n: some(getattr(self.towers, n) if self.towers is not None else None)
                      for n in ("image_pooler", "text_tower", "caption_decoder")}
        return towers | {
            "audio": some(a), "audio.conv": ModuleGroup([a.conv1, a.conv2] if a is not None else []),
            "audio.layers": ModuleGroup(list(audio_layers.values()), audio_layers,
                                        self.audio_cfg.num_layers if self.audio_cfg is not None else 0),
            "ctc_head": some(self.ctc_head), "audio_projector": some(self.audio_projector),
            "classifier": some(self.classifier), "codec": some(self.codec), "talker": some(t),
            "talker.layers": ModuleGroup(list(talker_layers.values()), talker_layers, self.talker_layers),
        }

    # ---- named module groups (the curriculum's freeze/LR contract) ----------------------------------------------
    def named_groups(self) -> dict:
        """Group name -> `models.groups.ModuleGroup` (modules this chunk holds; empty when the group lives on another
        pipeline stage). Layer lists also map global 0-based layer index -> layer, so the curriculum's resolver can
        slice `vit.layers[-k:]` / `llm.layers[-k:]` the same way under any layout."""
        groups = llm_groups(self.llm)
        vit, conn, vet = self.vit, self.connector, self.kind == "vet"
        here = vit is not None
        layers = {layer.layer_number - 1: layer for layer in vit.block.layers} if here else {}
        patch = [m for m in (vit.patch_embed, vit.pos_embed, vit.class_token, vit.pre_norm) if m is not None] \
            if here else []
        groups.update({
            "vit": ModuleGroup([vit] if here else []),
            "vit.patch_embed": ModuleGroup(patch),
            "vit.layers": ModuleGroup(list(layers.values()), layers, self.vit_num_layers),
            "visual_head": ModuleGroup([conn.head] if here and vet else []),
            "vet": ModuleGroup([conn.vet] if here and vet else []),
            "projector": ModuleGroup([conn] if here and not vet else []),
        })
        groups.update(self._part_groups())
        return groups

    # ---- forward ---------------------------------------------------------------------------------------------------
    def forward(self, input_ids: torch.Tensor | None, position_ids: torch.Tensor | None, attention_mask=None,
                labels: torch.Tensor | None = None, pixel_values: torch.Tensor | None = None,
                grid_thw: torch.Tensor | None = None, packed_seq_params: PackedSeqParams | None = None,
                audio_features: torch.Tensor | None = None, audio_cu_seqlens: torch.Tensor | None = None,
                task: str | None = None, **task_inputs):
        """Args:
            input_ids: int64 [b, s] with one `image_token_id` per merged visual token (b = 1 for packed THD).
            position_ids: int64 [b, s] (restarting per sample when packed), or [3, b, s] for M-RoPE, or None. With
                M-RoPE on (`mrope`) and [b, s] given, the 3D positions are computed here from the placeholders
                (`models.mrope`), per packed sample.
            labels: int64 [b, s] or None; mask image positions with `loss_mask` in the loss function.
            pixel_values: [T, C*tps*p*p] packed patches (`ops.pack_images`) or None for a text-only micro-batch.
            grid_thw: int [N, 3] per image, with pixel_values.
            packed_seq_params: THD packing of the text (cu_seqlens over the s axis), or None.
            audio_features: [F, n_mels] log-mel frames of packed clips (`ops.log_mel`) with audio_cu_seqlens int32
                [N + 1]; input_ids then hold one audio placeholder per pooled encoder frame, in clip order.
            task: None (the LLM), or a part trained alone: see `run_task` (task_inputs go there).
        Returns:
            per-token loss [b, s] (float32) when labels are given on the last stage, logits [b, s, V/tp] otherwise
            on the last stage, hidden states [s, b, h] on other stages (GPTModel's contract).
        """
        if self.mrope and position_ids is not None and position_ids.dim() == 2:
            from omni_mega.models.mrope import packed_rope_index

            cu = None if packed_seq_params is None else packed_seq_params.cu_seqlens_q
            position_ids = packed_rope_index(input_ids, self.image_token_id, grid_thw, self.merge_size, cu)
        if task is not None:
            return self.run_task(task, pixel_values=pixel_values, grid_thw=grid_thw, audio_features=audio_features,
                                 audio_cu_seqlens=audio_cu_seqlens, **task_inputs)
        decoder_input = None
        if self.pre_process:
            decoder_input = self.embed(input_ids, position_ids, pixel_values, grid_thw, audio_features,
                                       audio_cu_seqlens)
        return self.llm(input_ids, position_ids, attention_mask, decoder_input=decoder_input, labels=labels,
                        packed_seq_params=packed_seq_params)

    def visual_embeddings(self, pixel_values: torch.Tensor, grid_thw: torch.Tensor) -> torch.Tensor:
        """[T, C*tps*p*p] patches + grid [N, 3] -> [T / merge^2, llm hidden] (full on every TP rank)."""
        return self.connector(self.vit(pixel_values, grid_thw))

    def embed(self, input_ids, position_ids, pixel_values, grid_thw, audio_features=None,
              audio_cu_seqlens=None) -> torch.Tensor:
        """Text embeddings with visual/indicator/audio rows substituted: [s, b, h] (s / tp under SP)."""
        special = torch.isin(input_ids, torch.tensor(self.special_token_ids, device=input_ids.device))
        ids = input_ids.masked_fill(special, 0)  # placeholder ids need not exist in the vocabulary
        emb = self.llm.embedding(input_ids=ids, position_ids=None if position_ids is None or position_ids.dim() == 3
                                 else position_ids)
        sp = self.config.sequence_parallel
        if sp:  # the visual rows land anywhere in s: work on the full sequence, split again below
            emb = tensor_parallel.gather_from_sequence_parallel_region(emb, tensor_parallel_output_grad=False)
        emb = emb.transpose(0, 1)  # [b, s, h]
        if pixel_values is None:
            if bool((input_ids == self.image_token_id).any()):
                raise ValueError(f"input_ids hold image placeholder tokens (id {self.image_token_id}) but no "
                                 "pixel_values were given")
            if self.vit is not None:
                emb = emb + self._dummy_visual().to(emb.dtype) * 0.0
        else:
            if grid_thw is None:
                raise ValueError("pixel_values were given without grid_thw ([N, 3] (t, h, w) per image in patches)")
            m = self.vit.cfg.merge_size
            check_placeholders(input_ids, self.image_token_id, grid_thw, m, self.vit.extra_tokens)
            vis = self.visual_embeddings(pixel_values, grid_thw).to(emb.dtype)
            emb = emb.index_put(torch.nonzero(input_ids == self.image_token_id, as_tuple=True), vis)
        emb = self._put_indicators(emb, input_ids)
        emb = self._put_audio(emb, input_ids, audio_features, audio_cu_seqlens)
        emb = emb.transpose(0, 1).contiguous()  # [s, b, h]
        if sp:
            emb = tensor_parallel.scatter_to_sequence_parallel_region(emb)
        return emb

    def _dummy_visual(self) -> torch.Tensor:
        """Sum of the vision tower + connector output on a tiny zero image (one merge block): a scalar."""
        m, vit = self.vit.cfg.merge_size, self.vit
        dev = vit.patch_embed.weight.device
        px = torch.zeros(m * m, vit.in_features, dtype=vit.patch_embed.weight.dtype, device=dev)
        grid = torch.tensor([[1, m, m]], dtype=torch.long)
        return self.visual_embeddings(px, grid).sum()

    def _put_indicators(self, emb: torch.Tensor, input_ids: torch.Tensor) -> torch.Tensor:
        if self.kind != "vet" or self.connector.vet.indicators is None:
            return emb
        table = self.connector.vet.indicators
        emb = emb + table.sum().to(emb.dtype) * 0.0  # indicator rows stay in the graph when none occur
        for k, tok in enumerate(self.indicator_token_ids):
            where = torch.nonzero(input_ids == tok, as_tuple=True)
            if where[0].numel():
                ids = torch.full((where[0].numel(),), k, dtype=torch.long, device=input_ids.device)
                emb = emb.index_put(where, self.connector.indicator(ids).to(emb.dtype))
        return emb

    # ---- audio --------------------------------------------------------------------------------------------------
    def audio_embeddings(self, mel: torch.Tensor, cu_mel: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """log-mel [F, n_mels] + cu [N + 1] -> ([sum tokens, llm hidden], cu int32 [N + 1]): encoder states pooled
        `model.audio.pool` at a time, projected to the LLM width (full on every TP rank)."""
        states, cu = self.audio(mel, cu_mel)
        pooled, cu_pooled = pool_frames(states, cu, self.audio_cfg.pool)
        return self.audio_projector(pooled), cu_pooled

    def _put_audio(self, emb: torch.Tensor, input_ids: torch.Tensor, mel, cu_mel) -> torch.Tensor:
        if self.audio is None:
            return emb
        aid = self.audio_cfg.audio_token_id
        where = input_ids == aid
        if mel is None:
            if bool(where.any()):
                raise ValueError(f"input_ids hold {int(where.sum())} audio placeholder tokens (id {aid}) but no "
                                 "audio_features were given")
            return emb + self._dummy_audio().to(emb.dtype) * 0.0
        if cu_mel is None:
            raise ValueError("audio_features were given without audio_cu_seqlens (int32 [N + 1] clip bounds in frames)")
        per_clip = [self.audio_cfg.llm_tokens(int(n)) for n in (cu_mel[1:] - cu_mel[:-1]).tolist()]
        if int(where.sum()) != sum(per_clip):
            raise ValueError(f"input_ids hold {int(where.sum())} audio placeholder tokens (id {aid}) but the "
                             f"audio_features need {sum(per_clip)} (per clip: {per_clip}); the data pipeline must "
                             f"insert ceil(ceil(mel frames / 2) / {self.audio_cfg.pool}) placeholders per clip, in "
                             "clip order")
        aud, _ = self.audio_embeddings(mel, cu_mel)
        return emb.index_put(torch.nonzero(where, as_tuple=True), aud.to(emb.dtype))

    def _dummy_audio(self) -> torch.Tensor:
        """Sum of the audio encoder + projector output on a tiny silent clip (2 mel frames): a scalar."""
        w = self.audio.conv1.weight
        mel = torch.zeros(2, self.audio_cfg.n_mels, dtype=w.dtype, device=w.device)
        return self.audio_embeddings(mel, torch.tensor([0, 2], dtype=torch.int32, device=w.device))[0].sum()

    # ---- parts trained alone ----------------------------------------------------------------------------------------
    def run_task(self, task: str, *, pixel_values=None, grid_thw=None, audio_features=None, audio_cu_seqlens=None,
                 text=None, text_cu_seqlens=None, text_lengths=None):
        """One part and its head, without the LLM:
        - "ctc": (CTC logits [T, ctc_vocab_size + 1] at 50 Hz, cu int32 [N + 1]) of packed clips;
        - "classify": logits [N images, labels] of packed images;
        - "codec": the codec's training dict (`RVQCodec.forward`) of packed clips;
        - "talker": (base logits, residual logits, codes, codes cu) for packed clips spoken from `text`
          (int64 [sum L], text_cu_seqlens [N + 1]); the codes come from the (frozen) codec;
        - "contrastive": `models.contrastive.ContrastiveTowers.forward`'s dict for packed images (one per sample) and
          their captions `text` (int64 [N, L + 1] = BOS then tokens, right-padded) with `text_lengths` [N].
        """
        need = {"ctc": ("audio", "ctc_head"), "classify": ("vit", "classifier"), "codec": ("codec",),
                "talker": ("codec", "talker"), "contrastive": ("vit", "towers")}
        if task not in need:
            raise ValueError(f"OmniModel.run_task: unknown task {task!r}; known: {', '.join(need)}")
        missing = [p for p in need[task] if getattr(self, p) is None]
        if missing:
            part = "contrastive" if missing[0] == "towers" else missing[0]
            raise ValueError(f"OmniModel.run_task({task!r}): this model chunk has no {', '.join(missing)} (set "
                             f"model.{part} in the config; parts live on the first pipeline stage)")
        if task == "ctc":
            states, cu = self.audio(audio_features, audio_cu_seqlens)
            return self.ctc_head(states), cu
        if task == "classify":
            return self.classifier(self.vit(pixel_values, grid_thw), grid_thw, self.vit.cfg.merge_size)
        if task == "contrastive":
            return self.towers(self.vit(pixel_values, grid_thw), grid_thw, self.merge_size, text, text_lengths)
        if task == "codec":
            return self.codec(audio_features, audio_cu_seqlens)
        codes, cu = self.codec.encode(audio_features, audio_cu_seqlens)
        base, res = self.talker(text, text_cu_seqlens, codes, cu)
        return base, res, codes, cu
