"""Admin: the MTA's HTTP side: health, metrics, the operator API and its OpenAPI document;
`guard` decides who may call it (Host header, bearer token off loopback).

May import the service's stages (to read and drive them); never a command.
"""
