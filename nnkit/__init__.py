"""nnkit: a small neural-network trainer with hand-derived, batched backprop,
written once against the Python Array API standard and run on NumPy, CuPy,
PyTorch or any array library array-api-compat wraps (``backend=``).
"""
from .backend import Backend, get_backend
from .layers import (Layer, Dense, Dropout, Residual, BatchNorm, LayerNorm, Sigmoid, Tanh, ReLU, LeakyReLU, Softmax,
                     Identity, GELU, SiLU, ELU, Softplus, Conv1D, Conv2D, ConvTranspose1D, ConvTranspose2D, MaxPool1D,
                     MaxPool2D, AvgPool1D, AvgPool2D, GlobalAvgPool, Flatten, Reshape, RNN, GRU, LSTM, Embedding, SequencePool,
                     MultiHeadAttention, PositionalEmbedding, TransformerBlock, TiedDense)
from .losses import Loss, MSE, CrossEntropy, BinaryCrossEntropy, Poisson, get_loss
from .model import Sequential, load
from .gradcheck import gradcheck
from .callbacks import (History, Callback, EarlyStopping, ModelCheckpoint, ProgbarLogger, LearningRateScheduler,
                        GradientStats)
from .training import TrainingDivergedError
from .checkpoint import CheckpointError
from .preprocessing import Preprocessing
from .perceptron import Perceptron
from .lr_finder import lr_find
from . import init, optim, functional, datasets, callbacks, precision, plots, metrics, data, text

__version__ = "0.1.0"

__all__ = [
    "Backend", "get_backend", "Layer", "Dense", "Dropout", "Residual", "BatchNorm", "LayerNorm", "Conv1D", "Conv2D", "ConvTranspose1D", "ConvTranspose2D",
    "MaxPool1D", "MaxPool2D", "AvgPool1D", "AvgPool2D", "GlobalAvgPool", "Flatten", "Reshape", "RNN", "GRU", "LSTM", "Embedding", "SequencePool", "MultiHeadAttention",
    "PositionalEmbedding", "TransformerBlock", "TiedDense",
    "Sigmoid",
    "Tanh", "ReLU", "LeakyReLU", "Softmax", "Identity", "GELU", "SiLU", "ELU", "Softplus", "Loss", "MSE",
    "CrossEntropy", "BinaryCrossEntropy", "Poisson", "get_loss", "Sequential",
    "gradcheck", "init", "optim", "functional", "datasets", "History", "Callback", "EarlyStopping",
    "TrainingDivergedError", "GradientStats", "ModelCheckpoint", "ProgbarLogger", "LearningRateScheduler", "callbacks", "lr_find", "metrics", "load", "CheckpointError", "Preprocessing", "precision", "Perceptron", "plots", "data",
]
