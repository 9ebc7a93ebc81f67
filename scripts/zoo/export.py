"""Architectures outside the development set, with random (seeded) weights, exported to ONNX
both ways torch offers (the TorchScript exporter at opset 17, the dynamo exporter at opset 18).
No download: torchvision/transformers build the models from their configs.

usage: export.py OUTDIR [MODEL ...]   (needs torch, torchvision, transformers, onnxscript:
       the venv-torch that ../../shared/models/fetch.sh makes)"""
import os, sys, torch, torchvision
out = sys.argv[1]
os.makedirs(out, exist_ok=True)
only = sys.argv[2:]
def export(name, model, args, names, dynamo):
    if only and name not in only: return
    path = os.path.join(out, name + ".onnx")
    if os.path.exists(path): return
    model.eval()
    try:
        with torch.no_grad():
            if dynamo:
                torch.onnx.export(model, args, path, input_names=names, opset_version=18, dynamo=True,
                                  external_data=False, optimize=True)
            else:
                torch.onnx.export(model, args, path, input_names=names, opset_version=17, dynamo=False)
        print("wrote", path, flush=True)
    except Exception as e:
        print("FAILED", name, repr(e)[:300], flush=True)
tv = torchvision.models
img = (torch.randn(1, 3, 224, 224),)
torch.manual_seed(0)
for name, ctor, dyn in [
    ("mobilenet_v2", tv.mobilenet_v2, False), ("mobilenet_v3_small", tv.mobilenet_v3_small, True),
    ("efficientnet_b0", tv.efficientnet_b0, False), ("squeezenet1_1", tv.squeezenet1_1, True),
    ("shufflenet_v2_x1_0", tv.shufflenet_v2_x1_0, False), ("regnet_y_400mf", tv.regnet_y_400mf, True),
    ("mnasnet0_5", tv.mnasnet0_5, False), ("densenet121", tv.densenet121, True),
    ("convnext_tiny", tv.convnext_tiny, False), ("googlenet", lambda: tv.googlenet(aux_logits=False, init_weights=True), True),
    ("swin_t", tv.swin_t, False), ("vit_b_16", tv.vit_b_16, True),
]:
    torch.manual_seed(0)
    model = ctor()
    if name == "vit_b_16":
        # torchvision zero-initializes the classification head: every output would be the
        # (zero) bias whatever the network computes, and a check against ORT could not fail.
        torch.nn.init.normal_(model.heads.head.weight, std=0.02)
    if name == "googlenet":
        # Its initialization shrinks the features to ~1e-6 of the classifier's bias, so the
        # logits were the bias to 1e-12: without it they are what the network computes.
        torch.nn.init.zeros_(model.fc.bias)
    export(name, model, img, ["input"], dyn)
import transformers as tf
class LM(torch.nn.Module):
    def __init__(s, m): super().__init__(); s.m = m
    def forward(s, ids): return s.m(input_ids=ids).logits
class Enc(torch.nn.Module):
    def __init__(s, m): super().__init__(); s.m = m
    def forward(s, ids, mask): return s.m(input_ids=ids, attention_mask=mask).last_hidden_state
torch.manual_seed(0)
gpt2 = tf.GPT2LMHeadModel(tf.GPT2Config(n_layer=2, n_embd=256, n_head=4, vocab_size=5000, attn_implementation="eager"))
ids = torch.randint(0, 5000, (1, 32))
export("gpt2_small", LM(gpt2), (ids,), ["input_ids"], False)
torch.manual_seed(0)
db = tf.DistilBertModel(tf.DistilBertConfig(n_layers=2, dim=256, n_heads=4, hidden_dim=1024, vocab_size=5000, attn_implementation="eager"))
export("distilbert_small", Enc(db), (ids, torch.ones(1, 32, dtype=torch.int64)), ["input_ids", "attention_mask"], True)
torch.manual_seed(0)
rb = tf.RobertaModel(tf.RobertaConfig(num_hidden_layers=2, hidden_size=256, num_attention_heads=4, intermediate_size=1024, vocab_size=5000, attn_implementation="eager"))
export("roberta_small", Enc(rb), (ids, torch.ones(1, 32, dtype=torch.int64)), ["input_ids", "attention_mask"], False)
torch.manual_seed(0)
t5 = tf.T5EncoderModel(tf.T5Config(num_layers=2, d_model=256, num_heads=4, d_ff=1024, vocab_size=5000, d_kv=64))
class T5E(torch.nn.Module):
    def __init__(s, m): super().__init__(); s.m = m
    def forward(s, ids): return s.m(input_ids=ids).last_hidden_state
export("t5_encoder_small", T5E(t5), (ids,), ["input_ids"], True)
torch.manual_seed(0)
from torchvision.models.vision_transformer import VisionTransformer
vt = VisionTransformer(image_size=64, patch_size=16, num_layers=2, num_heads=4, hidden_dim=128, mlp_dim=256, num_classes=10)
torch.nn.init.normal_(vt.heads.head.weight, std=0.1)
export("vit_tiny", vt, (torch.randn(1, 3, 64, 64),), ["input"], True)
