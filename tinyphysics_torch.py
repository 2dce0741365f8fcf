"""A fast PyTorch (CPU) engine for the tinyphysics simulator model, built from the ONNX weights.

`models/tinyphysics.onnx` (exported by PyTorch 2.3, opset 14) is a 4-layer pre-LN GPT:

  inputs   states float32 [b, 20, 4] = (steer action, roll lataccel, v_ego, a_ego),
           tokens int64 [b, 20] (tokenised past lataccel, 1024 bins)
  embed    h = concat(states @ W_s + b_s  [64],  W_tok[tokens]  [64]) + W_pos[0..19]   -> [b, 20, 128]
  block x4 h = h + c_proj(attn(LN(h)))           attention: 4 heads x 32, scale 1/sqrt(32),
           h = h + c_proj(gelu_tanh(c_fc(LN(h))))  causal (lower-triangular) mask with -inf
  head     logits = LN_f(h) @ W_lm                  [b, 20, 1024]

  LN: eps 1e-5, biased variance (ReduceMean/Pow/Sqrt/Div in the graph), with weight and bias.
  GELU: the tanh approximation 0.5 x (1 + tanh(0.7978845834732056 (x + 0.044715 x^3))).
  c_attn [128, 384] (q | k | v), c_proj [128, 128], c_fc [128, 512], mlp c_proj [512, 128]
  and lm_head [128, 1024] have no bias; only the state embedding has one.

Only the last position's logits are ever used (`TinyPhysicsModel.logits`), so this engine
runs layers 0..2 on all 20 positions, and in layer 3 computes keys/values for all
positions but the query, attention output, MLP, final norm and lm head for the last
position only (about 0.70x the multiply-adds of the full graph, whose lm head over 20
positions alone costs more than a transformer layer).

`TorchPhysicsModel` mirrors `tinyphysics.TinyPhysicsModel`: `logits(states, tokens)` ->
float32 [N, 1024] and `probs(...)` (the shared `TinyPhysicsModel.softmax` at temperature 0.8
on float32 logits). dtype=torch.float32 matches onnxruntime to ~2e-4 in the logits (float32 rounding);
dtype=torch.bfloat16 runs the matmuls and attention in bf16 (AMX/AVX512-bf16 where the
CPU has them) with the residual stream, layer norms and the lm head in float32.
"""
from __future__ import annotations

import math
import os
from concurrent.futures import ThreadPoolExecutor
from typing import Dict, Optional, Sequence, Union

import numpy as np
import torch
import torch.nn.functional as F

import tinyphysics as tp
from tinyphysics import CONTEXT_LENGTH, VOCAB_SIZE, ModelError, TinyPhysicsModel, TOKENIZER

__all__ = ["TorchPhysicsModel", "ExactFastModel", "make_model", "load_onnx_weights", "native_bf16", "resolve_backend"]


def _node_map(graph):
    return {n.name: n for n in graph.node}


def load_onnx_weights(model_path: Union[str, os.PathLike]) -> Dict[str, object]:
    """Read the simulator's weights and hyper-parameters from its ONNX file.

    Returns a dict of numpy float32 arrays keyed by role ('w_state' [4,64], 'b_state' [64],
    'w_tok' [1024,64], 'w_pos' [20,128], per layer 'h{i}.ln1_w', 'h{i}.ln1_b', 'h{i}.w_qkv'
    [128,384], 'h{i}.w_proj' [128,128], 'h{i}.ln2_w', 'h{i}.ln2_b', 'h{i}.w_fc' [128,512],
    'h{i}.w_mproj' [512,128], 'lnf_w', 'lnf_b', 'w_lm' [128,1024]; matmul weights in the
    graph's x @ W layout) plus 'n_layer', 'n_head', 'eps' and 'attn_scale'.
    Raises ModelError naming the file when it is missing, not ONNX, or not this architecture.
    """
    import onnx
    from onnx import numpy_helper

    path = str(model_path)
    if not os.path.isfile(path):
        raise ModelError(f"{path}: no such model file")
    try:
        proto = onnx.load(path)
    except Exception as e:  # DecodeError and friends
        raise ModelError(f"{path}: not a loadable ONNX model ({str(e).strip()[:200]})") from None
    g = proto.graph
    names = sorted(i.name for i in g.input if i.name not in {x.name for x in g.initializer})
    if names != ["states", "tokens"]:
        raise ModelError(f"{path}: not the tinyphysics simulator (inputs {names}, expected ['states', 'tokens'])")
    inits = {i.name: i for i in g.initializer}
    nodes = _node_map(g)
    consts = {}
    for n in g.node:
        if n.op_type == "Constant" and n.attribute and n.attribute[0].name == "value":
            consts[n.output[0]] = numpy_helper.to_array(n.attribute[0].t)

    def init(name):
        if name not in inits:
            raise ModelError(f"{path}: not the tinyphysics simulator (initializer {name!r} missing)")
        return np.ascontiguousarray(numpy_helper.to_array(inits[name]), dtype=np.float32)

    def matmul_weight(node_name):
        n = nodes.get(node_name)
        if n is None or n.op_type != "MatMul" or n.input[1] not in inits:
            raise ModelError(f"{path}: not the tinyphysics simulator (MatMul node {node_name!r} missing)")
        return init(n.input[1])

    def const_of(node_name, idx=1):
        n = nodes.get(node_name)
        if n is None or n.input[idx] not in consts:
            raise ModelError(f"{path}: not the tinyphysics simulator (node {node_name!r} missing)")
        return consts[n.input[idx]]

    n_layer = 0
    while f"/h.{n_layer}/attn/c_attn/MatMul" in nodes:
        n_layer += 1
    if n_layer == 0:
        raise ModelError(f"{path}: not the tinyphysics simulator (no transformer blocks found)")

    w: Dict[str, object] = {
        "w_state": matmul_weight("/wt_embedding/MatMul"),
        "b_state": init("transformer.wt_embedding.bias"),
        "w_tok": init("transformer.wt2_embedding.weight"),
        "w_pos": init("transformer.wp_embedding.weight"),
        "lnf_w": init("transformer.layer_norm_f.weight"),
        "lnf_b": init("transformer.layer_norm_f.bias"),
        "w_lm": matmul_weight("/lm_head/MatMul"),
    }
    for i in range(n_layer):
        p = f"transformer.h.{i}"
        w[f"h{i}.ln1_w"] = init(f"{p}.attn.layer_norm.weight")
        w[f"h{i}.ln1_b"] = init(f"{p}.attn.layer_norm.bias")
        w[f"h{i}.w_qkv"] = matmul_weight(f"/h.{i}/attn/c_attn/MatMul")
        w[f"h{i}.w_proj"] = matmul_weight(f"/h.{i}/attn/c_proj/MatMul")
        w[f"h{i}.ln2_w"] = init(f"{p}.mlp.layer_norm.weight")
        w[f"h{i}.ln2_b"] = init(f"{p}.mlp.layer_norm.bias")
        w[f"h{i}.w_fc"] = matmul_weight(f"/h.{i}/mlp/c_fc/MatMul")
        w[f"h{i}.w_mproj"] = matmul_weight(f"/h.{i}/mlp/c_proj/MatMul")
        # Causal mask: the lower-triangular bool buffer.
        mask = numpy_helper.to_array(inits[f"{p}.attn.bias"]) if f"{p}.attn.bias" in inits else None
        if i == 0 and (mask is None or not np.array_equal(
                mask.reshape(CONTEXT_LENGTH, CONTEXT_LENGTH).astype(bool),
                np.tril(np.ones((CONTEXT_LENGTH, CONTEXT_LENGTH), dtype=bool)))):
            raise ModelError(f"{path}: not the tinyphysics simulator (attention mask is not causal)")
        if "Tanh" not in {n.op_type for n in g.node if n.name.startswith(f"/h.{i}/mlp/act/")}:
            raise ModelError(f"{path}: not the tinyphysics simulator (MLP activation is not tanh-GELU)")

    d_state = w["w_state"].shape[1]
    n_embd = w["w_pos"].shape[1]
    n_head_div = int(const_of("/h.0/attn/Div"))  # the head count: head size = n_embd / this
    shapes_ok = (w["w_state"].shape == (4, d_state) and w["w_tok"].shape == (VOCAB_SIZE, n_embd - d_state)
                 and w["w_pos"].shape == (CONTEXT_LENGTH, n_embd) and w["w_lm"].shape == (n_embd, VOCAB_SIZE)
                 and all(w[f"h{i}.w_qkv"].shape == (n_embd, 3 * n_embd) for i in range(n_layer))
                 and n_embd % n_head_div == 0)
    if not shapes_ok:
        raise ModelError(f"{path}: not the tinyphysics simulator (unexpected weight shapes)")
    w["n_layer"] = n_layer
    w["n_head"] = n_head_div
    w["eps"] = float(const_of("/h.0/attn/layer_norm/Add"))
    w["attn_scale"] = float(const_of("/h.0/attn/Mul"))
    w["model_path"] = path
    return w


class _WeightsModule(torch.nn.Module):
    """model._forward as a module whose buffers are the model's weight tensors: inductor's
    freezing folds a module's buffers into the graph as constants (prepacked oneDNN weights,
    GELU fused into its matmul); plain tensor attributes would stay graph inputs."""

    def __init__(self, model: "TorchPhysicsModel") -> None:
        super().__init__()
        self.model = model
        named = {"w_state": model.w_state, "b_state": model.b_state, "w_tok": model.w_tok, "w_pos": model.w_pos,
                 "lnf_w": model.lnf_w, "lnf_b": model.lnf_b, "w_lm": model.w_lm, "causal_mask": model._causal_mask}
        for i, layer in enumerate(model.layers):
            named.update({f"h{i}_{k}": v for k, v in layer.items() if torch.is_tensor(v)})
        for k, v in named.items():
            self.register_buffer(k, v, persistent=False)

    def forward(self, states: torch.Tensor, tokens: torch.Tensor) -> torch.Tensor:
        return self.model._forward(states, tokens)


class TorchPhysicsModel:
    """PyTorch CPU engine with the interface of `tinyphysics.TinyPhysicsModel`.

    model_path: the simulator ONNX file (weights are read with onnx.numpy_helper).
    dtype: torch.float32 (logits within ~2e-4 of onnxruntime, see the tests) or
        torch.bfloat16 (bf16 matmuls and attention; float32 residual stream, layer norms,
        state/token/position embeddings and lm head; mean total-variation distance of the
        probabilities to onnxruntime ~0.005 on pid-rollout inputs, ~0.012 on rollouts with
        random N(0,1) actions).
    num_threads: 1 (default, like TinyPhysicsModel) runs in the calling thread with one
        intra-op thread (the caller's torch setting is restored after each call). k > 1
        splits the batch into chunks run by k Python worker threads with one intra-op thread
        each: unlike torch's OpenMP intra-op threads, whose spin-waits make every small op
        10-50x slower when another process holds a core, this degrades gracefully.
        None runs in the calling thread with torch's current settings.
    chunk_rows: rows per forward pass; chunks keep the activations in L2 (default: the
        fastest measured, 64 for float32 and 128 for bf16).
    fp32_layers: indices of transformer layers to keep in float32 in bf16 mode; layer 0 is
        the most sensitive one ((0,) cuts the mean TV ~1.6-2.5x for ~25% more time).
    exact_gelu: use GELU's tanh form as the graph does (default) or the erf form, which is 5x
        faster in torch and differs by < 5e-4 (below bf16 resolution); default: exact in
        float32, erf in bf16.
    compile: run the forward pass through `torch.compile` (inductor with frozen weights and a
        C++ wrapper; attention as two batched matmuls and a softmax, which fuse better than the
        CPU flash kernel at T = 20): in bf16 about 1.2x the eager engine's rollouts per second
        on this machine (`python -m bench`), after a one-off compilation of 5-25 s per chunk
        size that needs a C++ compiler. Shapes are static: chunks are padded with zero rows to
        the smallest size compiled so far that fits, and only a batch larger than any before
        compiles again (see _compiled_size). Results differ from eager bf16 by bf16 rounding
        only (tests/test_tinyphysics_torch.py).
    Raises ModelError naming the file for a missing, unreadable or foreign ONNX file.
    """

    _compiled_graphs = 0  # graphs compiled in this process (see _compiled_size)

    def __init__(self, model_path: Union[str, os.PathLike], dtype: torch.dtype = torch.float32,
                 num_threads: Optional[int] = 1, chunk_rows: Optional[int] = None,
                 fp32_layers: Sequence[int] = (), exact_gelu: Optional[bool] = None,
                 compile: bool = False) -> None:
        if dtype not in (torch.float32, torch.bfloat16):
            raise ValueError(f"dtype must be torch.float32 or torch.bfloat16, got {dtype}")
        if num_threads is not None and int(num_threads) < 1:
            raise ValueError(f"num_threads must be None or >= 1, got {num_threads}")
        if chunk_rows is None:
            chunk_rows = 64 if dtype == torch.float32 else 128
        if int(chunk_rows) < 1:
            raise ValueError(f"chunk_rows must be >= 1, got {chunk_rows}")
        self.model_path = str(model_path)
        self.tokenizer = TOKENIZER
        self.dtype = dtype
        self.num_threads = None if num_threads is None else int(num_threads)
        self.chunk_rows = int(chunk_rows)
        self.exact_gelu = (dtype == torch.float32) if exact_gelu is None else bool(exact_gelu)
        self._fast_tanh_gelu = True
        self._gelu_c1 = torch.tensor(math.sqrt(2.0 / math.pi), dtype=torch.float32)
        self._gelu_c2 = math.sqrt(2.0 / math.pi) * 0.044715
        w = load_onnx_weights(model_path)
        self.n_layer = int(w["n_layer"])
        self.n_head = int(w["n_head"])
        self.eps = float(w["eps"])
        self.attn_scale = float(w["attn_scale"])
        self.n_embd = E = int(w["w_pos"].shape[1])
        self.head_dim = E // self.n_head
        self.fp32_layers = tuple(sorted({int(i) % self.n_layer for i in fp32_layers}))

        def f32(a):
            return torch.tensor(np.ascontiguousarray(a), dtype=torch.float32)

        self.w_state = f32(w["w_state"])
        self.b_state = f32(w["b_state"])
        self.w_tok = f32(w["w_tok"])
        self.w_pos = f32(w["w_pos"])
        self.layers = []
        for i in range(self.n_layer):
            ldt = torch.float32 if i in self.fp32_layers else dtype

            def lin(a, ldt=ldt):  # graph layout x @ W [in, out] -> F.linear layout [out, in]
                return f32(np.ascontiguousarray(a.T)).to(ldt)

            qkv = w[f"h{i}.w_qkv"]
            self.layers.append(dict(
                dt=ldt,
                ln1_w=f32(w[f"h{i}.ln1_w"]), ln1_b=f32(w[f"h{i}.ln1_b"]),
                w_qkv=lin(qkv), w_q=lin(qkv[:, :E]), w_kv=lin(qkv[:, E:]),
                w_proj=lin(w[f"h{i}.w_proj"]),
                ln2_w=f32(w[f"h{i}.ln2_w"]), ln2_b=f32(w[f"h{i}.ln2_b"]),
                w_fc=lin(w[f"h{i}.w_fc"]), w_mproj=lin(w[f"h{i}.w_mproj"]),
                w_mproj_half=lin(0.5 * w[f"h{i}.w_mproj"]),
            ))
        self.lnf_w = f32(w["lnf_w"])
        self.lnf_b = f32(w["lnf_b"])
        self.w_lm = f32(np.ascontiguousarray(w["w_lm"].T))  # the lm head stays float32
        self._pool = None
        self.compile = bool(compile)
        self._compiled = None        # the torch.compile'd _forward, built on the first call
        self._compiled_rows = []     # the static chunk sizes it was compiled for
        self._causal_mask = torch.full((CONTEXT_LENGTH, CONTEXT_LENGTH), float("-inf")).triu(1)

    # ----------------------------------------------------------------------------------
    def _ln(self, x, w, b):
        return F.layer_norm(x, (self.n_embd,), w, b, self.eps)

    def _attention(self, q, k, v, causal: bool):
        """softmax(q k^T * scale [+ causal mask]) v for q [N,H,Tq,D], k, v [N,H,T,D]."""
        if not self.compile:
            return F.scaled_dot_product_attention(q, k, v, is_causal=causal, scale=self.attn_scale)
        # Compiled: plain matmuls and a float32 softmax fuse better than the CPU flash kernel,
        # whose blocking is built for long sequences (T is 20 here).
        s = torch.matmul(q, k.transpose(-1, -2)).float() * self.attn_scale
        if causal:
            s = s + self._causal_mask
        return torch.matmul(torch.softmax(s, dim=-1).to(v.dtype), v)

    def _mlp(self, a: torch.Tensor, layer: dict) -> torch.Tensor:
        """c_proj(gelu(c_fc(a))) of the normed float32 input a, as float32."""
        u = F.linear(a.to(layer["dt"]), layer["w_fc"])
        if self.exact_gelu and layer["dt"] == torch.float32 and self._fast_tanh_gelu:
            # 2 gelu(u) = u + u tanh(sqrt(2/pi) u (1 + 0.044715 u^2)) in four in-place passes
            # (torch's fused tanh-GELU is 1.3x slower); the 0.5 lives in w_mproj_half.
            t = torch.addcmul(self._gelu_c1, u, u, value=self._gelu_c2)
            t.mul_(u).tanh_()
            return F.linear(torch.addcmul(u, u, t), layer["w_mproj_half"])
        m = F.gelu(u, approximate="tanh" if self.exact_gelu else "none")
        return F.linear(m, layer["w_mproj"]).float()

    def _forward(self, states: torch.Tensor, tokens: torch.Tensor) -> torch.Tensor:
        """Last-position logits float32 [N, V] of states float32 [N,T,4], tokens int64 [N,T]."""
        N, T, _ = states.shape
        H, D, E = self.n_head, self.head_dim, self.n_embd
        # Embeddings (float32): [state projection | token embedding] + position embedding.
        h = torch.cat([torch.addmm(self.b_state, states.reshape(N * T, 4), self.w_state).view(N, T, -1),
                       F.embedding(tokens, self.w_tok)], dim=-1)
        h = (h + self.w_pos[:T]).view(N * T, E)
        for layer in self.layers[:-1]:
            dt = layer["dt"]
            a = self._ln(h, layer["ln1_w"], layer["ln1_b"]).to(dt)
            q, k, v = F.linear(a, layer["w_qkv"]).view(N, T, 3, H, D).permute(2, 0, 3, 1, 4)
            y = self._attention(q, k, v, causal=True)
            h = h + F.linear(y.transpose(1, 2).reshape(N * T, E), layer["w_proj"]).float()
            h = h + self._mlp(self._ln(h, layer["ln2_w"], layer["ln2_b"]), layer)
        # Last layer: keys/values for every position, everything else for the last one only.
        layer = self.layers[-1]
        dt = layer["dt"]
        a = self._ln(h, layer["ln1_w"], layer["ln1_b"]).to(dt).view(N, T, E)
        k, v = F.linear(a, layer["w_kv"]).view(N, T, 2, H, D).permute(2, 0, 3, 1, 4)
        q = F.linear(a[:, -1], layer["w_q"]).view(N, H, 1, D)
        y = self._attention(q, k, v, causal=False)  # the last row sees all
        h_last = h.view(N, T, E)[:, -1] + F.linear(y.reshape(N, E), layer["w_proj"]).float()
        h_last = h_last + self._mlp(self._ln(h_last, layer["ln2_w"], layer["ln2_b"]), layer)
        return F.linear(self._ln(h_last, self.lnf_w, self.lnf_b), self.w_lm)

    def _run_chunks(self, states, tokens, out, starts, size):
        with torch.inference_mode():
            for i in starts:
                if self._compiled is None:
                    out[i:i + size] = self._forward(states[i:i + size], tokens[i:i + size])
                    continue
                s, t = states[i:i + size], tokens[i:i + size]
                n = s.shape[0]
                if n < size:  # static shapes: pad the short chunk (rows are independent)
                    s = torch.cat([s, s.new_zeros((size - n,) + s.shape[1:])])
                    t = torch.cat([t, t.new_zeros((size - n,) + t.shape[1:])])
                out[i:i + n] = self._compiled(s, t)[:n]

    def _compiled_size(self, states, tokens, need: int) -> int:
        """The static chunk size for chunks of `need` rows: the smallest size compiled so far
        that fits (short chunks are zero-padded), else `need` itself, compiled now in the calling
        thread. Only a larger batch than any before compiles again, so a run with a fixed
        number of environments compiles once."""
        fits = [c for c in self._compiled_rows if c >= need]
        if fits:
            return min(fits)
        size = need
        import torch._dynamo as dynamo
        if self._compiled is None:
            self._compiled = torch.compile(_WeightsModule(self).eval(), dynamic=False,
                                           options={"freezing": True, "cpp_wrapper": True})
        # Every new (engine, size) pair is a new cache entry of the same forward code object;
        # without this, dynamo would silently run eagerly past its default limit of 8.
        TorchPhysicsModel._compiled_graphs += 1
        dynamo.config.recompile_limit = max(dynamo.config.recompile_limit, 8 + TorchPhysicsModel._compiled_graphs)
        prev = torch.get_num_threads()
        torch.set_num_threads(1)
        try:
            with torch.inference_mode():
                self._compiled(states[:1].expand(size, -1, -1).clone(), tokens[:1].expand(size, -1).clone())
        except Exception as e:  # no C++ compiler, unsupported platform, ...
            raise RuntimeError(
                f"{self.model_path}: torch.compile of the simulator failed ({type(e).__name__}: "
                f"{str(e).strip()[:300]}); it needs a working C++ compiler (g++). Use the eager engine "
                f"instead: simulator.backend=torch_fp32 or torch_bf16") from e
        finally:
            torch.set_num_threads(prev)
        self._compiled_rows.append(size)
        return size

    def _worker_init(self):
        torch.set_num_threads(1)

    def logits_tensor(self, states: torch.Tensor, tokens: torch.Tensor) -> torch.Tensor:
        """Last-position logits float32 [N, 1024] of torch tensors states float32 [N,20,4], tokens int64 [N,20]."""
        n = states.shape[0]
        k = self.num_threads
        size = self.chunk_rows
        if k is not None and k > 1:
            size = max(1, min(size, -(-n // k)))  # at least k chunks when the batch allows
        if self.compile:
            # Every chunk must reach the graph as an inference tensor (like the padded ones),
            # or dynamo's dispatch-key guard recompiles it.
            with torch.inference_mode():
                states, tokens = states.clone(), tokens.clone()
            size = self._compiled_size(states, tokens, max(1, min(size, n)))
        out = torch.empty((n, VOCAB_SIZE), dtype=torch.float32)
        starts = list(range(0, n, size))
        if k is None or k == 1 or len(starts) == 1:
            prev = torch.get_num_threads()
            if k is not None and prev != 1:
                torch.set_num_threads(1)
            try:
                self._run_chunks(states, tokens, out, starts, size)
            finally:
                if k is not None and prev != 1:
                    torch.set_num_threads(prev)
            return out
        if self._pool is None:
            self._pool = ThreadPoolExecutor(k, thread_name_prefix="tinyphysics_torch",
                                            initializer=self._worker_init)
        futures = [self._pool.submit(self._run_chunks, states, tokens, out, starts[j::k], size)
                   for j in range(k)]
        for f in futures:
            f.result()
        return out

    def logits(self, states: np.ndarray, tokens: np.ndarray) -> np.ndarray:
        """Last-position logits, float32 [N, 1024], for states float32 [N,20,4], tokens int64 [N,20]."""
        states = np.asarray(states)
        tokens = np.asarray(tokens)
        if states.ndim != 3 or states.shape[1:] != (CONTEXT_LENGTH, 4) or tokens.shape != states.shape[:2]:
            raise ValueError(f"expected states [N,{CONTEXT_LENGTH},4] and tokens [N,{CONTEXT_LENGTH}], "
                             f"got {states.shape} and {tokens.shape}")
        if states.shape[0] == 0:
            return np.zeros((0, VOCAB_SIZE), dtype=np.float32)
        if tokens.min() < 0 or tokens.max() >= VOCAB_SIZE:
            raise ValueError(f"tokens must be in [0, {VOCAB_SIZE}), got [{tokens.min()}, {tokens.max()}]")
        s = torch.from_numpy(np.array(states, dtype=np.float32, order="C", copy=True))
        t = torch.from_numpy(np.array(tokens, dtype=np.int64, order="C", copy=True))
        return self.logits_tensor(s, t).numpy()

    softmax = staticmethod(TinyPhysicsModel.softmax)

    def probs(self, states: np.ndarray, tokens: np.ndarray) -> np.ndarray:
        """Next-lataccel distribution, float32 [N, 1024]: TinyPhysicsModel.softmax of the logits."""
        return self.softmax(self.logits(states, tokens))

    def sample(self, states: np.ndarray, tokens: np.ndarray, u: np.ndarray) -> np.ndarray:
        """Sampled next tokens int64 [N] for uniforms u [N] (tinyphysics.sample_tokens)."""
        return tp.sample_tokens(self.probs(states, tokens), u)

    def close(self) -> None:
        """Stop the worker threads (num_threads > 1); the model stays usable."""
        if self._pool is not None:
            self._pool.shutdown(wait=True)
            self._pool = None

    def __del__(self):
        pool = getattr(self, "_pool", None)
        if pool is not None:
            pool.shutdown(wait=False)

    def __repr__(self) -> str:
        return (f"TorchPhysicsModel({self.model_path!r}, dtype={self.dtype}, num_threads={self.num_threads}, "
                f"chunk_rows={self.chunk_rows}, fp32_layers={self.fp32_layers}, exact_gelu={self.exact_gelu})")


class ExactFastModel:
    """Exact sampling at torch speed: float32 torch logits, onnxruntime where it could matter.

    The fast engine's logits differ from onnxruntime's by at most `logit_error` (measured
    max 3.2e-4 over 75k real rows; the default 1e-3 is about 3x that). With every logit
    off by at most e, each weight exp(z / T) is off by a factor within exp(+-e / T), so a
    cdf entry c = A / (A + B) moves at most to c r / (c r + 1 - c), r = exp(2e / T):
    |c' - c| <= (r - 1) c (1 - c). The token drawn from the fast cdf is the reference's
    whenever u is farther than that bound (plus 1e-12 for float64 rounding) from both
    edges of the drawn bin; other rows are recomputed with the onnxruntime model (the
    fallback) and sampled from its probabilities. Costs therefore equal the official
    harness's (golden parity test).

    Counters: `rows` sampled, `fallback_rows` recomputed with onnxruntime.
    """

    def __init__(self, model_path, num_threads: int = 1, logit_error: float = 1e-3) -> None:
        self.fast = TorchPhysicsModel(model_path, dtype=torch.float32, num_threads=num_threads)
        self.reference = tp.TinyPhysicsModel(model_path)
        self.r_minus_1 = math.expm1(2 * logit_error / tp.TEMPERATURE)
        self.rows = 0
        self.fallback_rows = 0

    def logits(self, states: np.ndarray, tokens: np.ndarray) -> np.ndarray:
        return self.reference.logits(states, tokens)

    def probs(self, states: np.ndarray, tokens: np.ndarray) -> np.ndarray:
        return self.reference.probs(states, tokens)

    def sample(self, states: np.ndarray, tokens: np.ndarray, u: np.ndarray) -> np.ndarray:
        """Sampled tokens int64 [N], identical to the onnxruntime model's for the same u."""
        cdf = np.cumsum(self.fast.probs(states, tokens).astype(np.float64), axis=-1)
        cdf /= cdf[:, -1:]
        tok = (cdf <= u[:, None]).sum(axis=-1)
        rows = np.arange(len(u))
        lower = np.where(tok > 0, cdf[rows, np.maximum(tok - 1, 0)], 0.0)   # cdf just below the bin
        upper = cdf[rows, np.minimum(tok, tp.VOCAB_SIZE - 1)]               # cdf at the bin's top
        def bound(c):
            return self.r_minus_1 * c * (1.0 - c) + 1e-12
        near = (u - lower < bound(lower)) | (upper - u <= bound(upper))
        self.rows += len(u)
        if near.any():
            idx = np.flatnonzero(near)
            self.fallback_rows += len(idx)
            tok[idx] = tp.sample_tokens(self.reference.probs(states[idx], tokens[idx]), u[idx])
        return tok

    @property
    def fallback_rate(self) -> float:
        return self.fallback_rows / max(self.rows, 1)

    def close(self) -> None:
        self.fast.close()


BACKENDS = ("onnx", "torch_exact", "torch_fp32", "torch_bf16", "torch_bf16_compiled", "auto")


def native_bf16() -> bool:
    """True when this CPU multiplies bf16 matrices in hardware (AMX tiles or AVX512-BF16).

    Without them (e.g. AVX2-only CPUs) torch emulates bf16 matmuls, 5-8x slower than
    float32, so the bf16 engines become the slowest.
    """
    return bool(torch.cpu._is_amx_tile_supported() or torch.cpu._is_avx512_bf16_supported())


def resolve_backend(backend: str) -> str:
    """The concrete backend for a name: 'auto' is the fastest training engine for this CPU,
    torch_bf16_compiled with native bf16 (see native_bf16), else onnx (measured on a 2-core
    AVX2 AMD EPYC, 64 rows from step 100, 1 thread: onnx 1,560 steps/s, torch_fp32 1,396,
    torch_fp32 through torch.compile 1,481, torch_bf16_compiled 182); other names are
    returned unchanged."""
    if backend != "auto":
        return backend
    return "torch_bf16_compiled" if native_bf16() else "onnx"


def make_model(backend: str, model_path, num_threads: int = 1):
    """The simulator model for a backend name.

    onnx: onnxruntime, the reference (exact); torch_exact: ExactFastModel (exact, faster);
    torch_fp32 / torch_bf16: TorchPhysicsModel alone (approximate: training rollouts only);
    torch_bf16_compiled: torch_bf16 through torch.compile (the fastest training engine on CPUs
    with native bf16; needs a C++ compiler and compiles for ~5-25 s on its first call);
    auto: resolve_backend picks the fastest for this CPU (torch_bf16_compiled or onnx).
    """
    backend = resolve_backend(backend)
    if backend == "onnx":
        return tp.TinyPhysicsModel(model_path, num_threads=num_threads)
    if backend == "torch_exact":
        return ExactFastModel(model_path, num_threads=num_threads)
    if backend in ("torch_fp32", "torch_bf16", "torch_bf16_compiled"):
        dtype = torch.float32 if backend == "torch_fp32" else torch.bfloat16
        return TorchPhysicsModel(model_path, dtype=dtype, num_threads=num_threads,
                                 compile=backend == "torch_bf16_compiled")
    raise ValueError(f"unknown simulator backend {backend!r}; choose from {BACKENDS}")
