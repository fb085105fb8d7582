"""build/: checkpoint -> verified ONNX (and TensorRT plans) -> a Triton model repository.

build/ reads the checkpoint's config, tokenizer, split and labels through the torch-free contract
package; it imports training/ only where it needs the PyTorch model itself:

    artifacts.py   load_model: training.model.BertForSequenceClassification and training.lora's
                   adapter merge, the fp32 reference every export is verified against and the
                   model the ONNX exporter traces
    quantize.py    the model modelopt quantizes (training.model), and the trainer's step, optimizer
                   and schedule (training.loop) that quantization-aware fine-tuning runs
    export_torchscript.py
                   the PyTorch model the GPU target traces to TorchScript (training.model)
    repository.py  the PyTorch model the CPU target serves (training.model, saved with save_pretrained)
    triton_models/pytorch_model.py
                   the served PyTorch model, which imports the training/ snapshot that
                   repository_files.snapshot_training copies beside it (not this checkout's training/)
"""
