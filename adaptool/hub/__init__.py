"""Sharing through the Hugging Face Hub: push, pull, and Hub ids in place of folders."""
