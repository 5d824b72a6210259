"""The 98 Japanese ECG terms, Japanese readings and the maps from dataset codes to terms."""
