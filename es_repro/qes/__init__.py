"""QES: evolution strategies directly on the integer codes of a quantized model (issue 14).

quant.py    the quantized-tensor format (codes, per-group scale and zero, g_idx), round-to-nearest group
            quantization and de-quantization
gptq.py     GPTQ packed format (qweight / qzeros / scales / g_idx): pack, unpack, save and load a checkpoint
model.py    which layers are quantized, and a quantized model from a GPTQ directory or the built-in quantizer
steps.py    the integer perturbation (stochastic rounding, boundary gating) and the error-feedback update step
residual.py residual storage: ``full`` (fp16 per layer) or ``replay`` (the last K records, rebuilt each update)
weights.py  the codes as ES sees them: perturb / restore / update, re-de-quantizing only the elements that changed
backend.py  QESBackend behind the Backend seam (es.update=qes)
quantize.py command line: quantize a model offline into a GPTQ-format directory
"""

# Allowed values of the es.qes settings (kept here, import-light, for config validation).
BITS = (4, 8)
RESIDUAL_MODES = ("replay", "full")
INIT_RESIDUALS = ("zero", "uniform")
NORMS = ("code", "paper")  # g = (1/sigma) sum c d (the released code) | (1/(N sigma)) sum c d (the paper's Eq. 5)
