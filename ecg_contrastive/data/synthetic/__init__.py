"""The ECG simulator: dipole model, rhythms, findings, noise, Japanese reports."""
