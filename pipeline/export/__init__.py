"""``pipe export``: the fine-tuned models as ONNX or TorchScript files, verified against PyTorch before they ship.

``modules`` holds the exported graphs (plain ``nn.Module`` wrappers), ``run`` exports and verifies them and
writes ``export_report.json``, ``runtime`` runs the files behind the same interface as the PyTorch models of
``pipeline.predict.models`` (``pipe predict --backend onnx``).
"""
