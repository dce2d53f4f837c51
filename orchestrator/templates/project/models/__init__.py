"""This project's models. conf/sweep.yaml names one by import path: ``model: {factory: "models.net:build"}``."""
