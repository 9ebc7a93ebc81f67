"""The int8 versions of the zoo's models: ONNX Runtime's static QDQ quantizer (per-channel S8
weights, U8 activations, MinMax calibration on 8 seeded random images) for the CNNs, its dynamic
quantizer (S8 MatMul/Gemm weights) for the transformers.

usage: quant.py ZOO_DIR [MODEL ...]   (needs onnxruntime and numpy: the venv that
       ../../shared/models/fetch.sh makes; writes ZOO_DIR/int8/<model>_qdq.onnx or _dyn.onnx)"""
import os, sys, numpy as np, onnx
from onnxruntime.quantization import (quantize_static, quantize_dynamic, QuantFormat, QuantType,
                                      CalibrationDataReader, CalibrationMethod)
from onnxruntime.quantization.shape_inference import quant_pre_process
z = sys.argv[1]; o = os.path.join(z, "int8"); only = sys.argv[2:]
os.makedirs(o, exist_ok=True)
class Reader(CalibrationDataReader):
    def __init__(self, name, shape, n=8):
        rng = np.random.default_rng(0)
        self.it = iter([{name: rng.standard_normal(shape, dtype=np.float32)} for _ in range(n)])
    def get_next(self): return next(self.it, None)
for m in ["mobilenet_v2", "efficientnet_b0", "squeezenet1_1", "googlenet", "regnet_y_400mf", "shufflenet_v2_x1_0"]:
    if only and m not in only: continue
    try:
        pre = f"{o}/{m}_pre.tmp.onnx"
        quant_pre_process(f"{z}/{m}.onnx", pre, skip_symbolic_shape=False)
        quantize_static(pre, f"{o}/{m}_qdq.onnx", Reader("input", (1, 3, 224, 224)), quant_format=QuantFormat.QDQ,
                        per_channel=True, activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8,
                        calibrate_method=CalibrationMethod.MinMax)
        os.remove(pre); print("wrote", m, flush=True)
    except Exception as e: print("FAILED", m, repr(e)[:200], flush=True)
for m in ["distilbert_small", "gpt2_small", "roberta_small", "t5_encoder_small", "vit_tiny"]:
    if only and m not in only: continue
    try:
        pre = f"{o}/{m}_pre.tmp.onnx"
        quant_pre_process(f"{z}/{m}.onnx", pre, skip_symbolic_shape=True)
        quantize_dynamic(pre, f"{o}/{m}_dyn.onnx", weight_type=QuantType.QInt8, per_channel=False,
                         op_types_to_quantize=["MatMul", "Gemm"])
        os.remove(pre); print("wrote", m, flush=True)
    except Exception as e: print("FAILED", m, repr(e)[:200], flush=True)
