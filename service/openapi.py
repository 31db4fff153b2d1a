"""The OpenAPI 3.1 document of every route (GET /openapi.json) and a docs page for it (GET /docs).

The sizes, ranges and limits in the schemas come from service.model.contract and the
ServiceConfig the app runs with, so the document says what this server accepts. The page is
Swagger UI, served from the swagger-ui-py wheel by this app: nothing is loaded from the internet.
"""

from __future__ import annotations

import importlib.metadata
import importlib.resources
import os
from dataclasses import dataclass, field
from typing import Any

from flask import Blueprint, Response, jsonify, send_from_directory

from service.config import ServiceConfig
from service.errors import NotFound
from service.images import ImageLimits
from service.model.contract import (
    IMAGE_SIDE,
    INPUT_NAME,
    MODEL_NAME,
    N_CLASSES,
    N_PIXELS,
    OUTPUT_LABEL,
    OUTPUT_PROBABILITIES,
    PIXEL_MAX,
)
from service.observability.request_log import MAX_REQUEST_ID_LENGTH, REQUEST_ID_HEADER

OPENAPI_VERSION = "3.1.0"
JSON = "application/json"
Schema = dict[str, Any]

#: Swagger UI files the page needs, served from the swagger-ui-py wheel under /docs/assets/
SWAGGER_ASSETS = {
    "swagger-ui.css": "text/css",
    "swagger-ui-bundle.js": "text/javascript",
    "favicon-32x32.png": "image/png",
}
#: Triton binary tensor extension: the length of the JSON header before the binary tensors
BINARY_HEADER = "Inference-Header-Content-Length"


@dataclass(frozen=True)
class ApiLimits:
    """The request limits the document states, as the app enforces them."""

    max_batch: int
    max_body_bytes: int
    image: ImageLimits = field(default_factory=ImageLimits)

    @classmethod
    def from_config(cls, config: ServiceConfig) -> ApiLimits:
        """The limits of a service running with ``config``."""
        return cls(
            max_batch=config.max_batch,
            max_body_bytes=config.max_body_bytes,
            image=ImageLimits(
                max_bytes=config.max_image_bytes,
                max_pixels=config.max_image_pixels,
                formats=ImageLimits().formats,
            ),
        )


def _ref(name: str) -> Schema:
    return {"$ref": f"#/components/schemas/{name}"}


def _json(schema: Schema, description: str) -> dict[str, Any]:
    return {"description": description, "content": {JSON: {"schema": schema}}}


def _with_request_id(response: dict[str, Any]) -> dict[str, Any]:
    return {**response, "headers": {REQUEST_ID_HEADER: {"$ref": "#/components/headers/RequestId"}}}


def _errors(statuses: dict[int, str], schema: str = "Error") -> dict[str, Any]:
    return {
        str(status): _with_request_id(_json(_ref(schema), text))
        for status, text in statuses.items()
    }


def _empty(description: str) -> dict[str, Any]:
    return _with_request_id({"description": description})


def _schemas(limits: ApiLimits) -> dict[str, Schema]:
    pixel = {"type": "number", "minimum": 0, "maximum": PIXEL_MAX}
    formats = ", ".join(limits.image.formats)
    # base64 grows the bytes by 4/3; a data URL adds a short prefix
    max_encoded = (limits.image.max_bytes + 2) // 3 * 4 + 64
    probability = {"type": "number", "minimum": 0, "maximum": 1}
    digit = {"type": "integer", "minimum": 0, "maximum": N_CLASSES - 1}
    return {
        "Error": {
            "type": "object",
            "description": "Every error of the simple API, the docs and /metrics.",
            "required": ["error"],
            "properties": {
                "error": {
                    "type": "object",
                    "required": ["code", "message"],
                    "properties": {
                        "code": {"type": "string", "examples": ["invalid_input"]},
                        "message": {"type": "string", "description": "What was wrong."},
                    },
                }
            },
        },
        "V2Error": {
            "type": "object",
            "description": "An error of the Open Inference Protocol, in the protocol's shape.",
            "required": ["error"],
            "properties": {"error": {"type": "string"}},
        },
        "FlatPixels": {
            "type": "array",
            "description": f"{N_PIXELS} raw pixels, row by row: 0 background .. 255 ink (MNIST).",
            "minItems": N_PIXELS,
            "maxItems": N_PIXELS,
            "items": pixel,
        },
        "PixelRows": {
            "type": "array",
            "description": f"{IMAGE_SIDE} rows of {IMAGE_SIDE} raw pixels, 0..255, ink high.",
            "minItems": IMAGE_SIDE,
            "maxItems": IMAGE_SIDE,
            "items": {
                "type": "array",
                "minItems": IMAGE_SIDE,
                "maxItems": IMAGE_SIDE,
                "items": pixel,
            },
        },
        "EncodedImage": {
            "type": "string",
            "description": (
                f"A {formats} image as base64 or as a data URL (data:image/png;base64,...): "
                f"at most {limits.image.max_bytes} bytes before encoding and "
                f"{limits.image.max_pixels} pixels; any size, dark-on-light or light-on-dark."
            ),
            "maxLength": max_encoded,
        },
        "Image": {
            "oneOf": [_ref("FlatPixels"), _ref("PixelRows"), _ref("EncodedImage")],
        },
        "PredictRequest": {
            "type": "object",
            "required": ["images"],
            "properties": {
                "images": {
                    "type": "array",
                    "minItems": 1,
                    "maxItems": limits.max_batch,
                    "items": _ref("Image"),
                }
            },
        },
        "ImageUpload": {
            "type": "string",
            "format": "binary",
            "description": (
                f"One {formats} file of at most {limits.image.max_bytes} bytes and "
                f"{limits.image.max_pixels} pixels."
            ),
        },
        "Prediction": {
            "type": "object",
            "required": ["digit", "confidence", "probabilities"],
            "properties": {
                "digit": digit,
                "confidence": {**probability, "description": "The probability of `digit`."},
                "probabilities": {
                    "type": "array",
                    "description": "The probability of each digit 0..9, in order.",
                    "minItems": N_CLASSES,
                    "maxItems": N_CLASSES,
                    "items": probability,
                },
                "top_k": {
                    "type": "array",
                    "description": "With ?top_k=k: the k most likely digits, best first.",
                    "minItems": 1,
                    "maxItems": N_CLASSES,
                    "items": {
                        "type": "object",
                        "required": ["digit", "probability"],
                        "properties": {"digit": digit, "probability": probability},
                    },
                },
                "input_png": {
                    "type": "string",
                    "contentEncoding": "base64",
                    "contentMediaType": "image/png",
                    "description": (
                        f"With ?return_input=true: the {IMAGE_SIDE}x{IMAGE_SIDE} image the model "
                        "saw, as a base64 PNG."
                    ),
                },
            },
        },
        "ModelRef": {
            "type": "object",
            "required": ["name", "version"],
            "properties": {
                "name": {"type": "string", "examples": [MODEL_NAME]},
                "version": {"type": "integer", "minimum": 1},
            },
        },
        "PredictResponse": {
            "type": "object",
            "required": ["predictions", "model", "request_id"],
            "properties": {
                "predictions": {
                    "type": "array",
                    "description": "One prediction per image, in the order sent.",
                    "minItems": 1,
                    "maxItems": limits.max_batch,
                    "items": _ref("Prediction"),
                },
                "model": _ref("ModelRef"),
                "request_id": {"type": "string", "maxLength": MAX_REQUEST_ID_LENGTH},
            },
        },
        "V2ServerMetadata": {
            "type": "object",
            "required": ["name", "version", "extensions"],
            "properties": {
                "name": {"type": "string"},
                "version": {"type": "string"},
                "extensions": {"type": "array", "items": {"type": "string"}},
            },
        },
        "V2TensorMetadata": {
            "type": "object",
            "required": ["name", "datatype", "shape"],
            "properties": {
                "name": {"type": "string"},
                "datatype": {"type": "string"},
                "shape": {"type": "array", "items": {"type": "integer"}},
            },
        },
        "V2ModelMetadata": {
            "type": "object",
            "required": ["name", "platform", "inputs", "outputs"],
            "properties": {
                "name": {"type": "string", "examples": [MODEL_NAME]},
                "versions": {"type": "array", "items": {"type": "string"}},
                "platform": {"type": "string", "examples": ["onnxruntime_onnx"]},
                "inputs": {"type": "array", "items": _ref("V2TensorMetadata")},
                "outputs": {"type": "array", "items": _ref("V2TensorMetadata")},
            },
        },
        "V2InferenceRequest": {
            "type": "object",
            "required": ["inputs"],
            "properties": {
                "id": {"type": "string", "description": "Echoed in the response."},
                "parameters": {
                    "type": "object",
                    "properties": {
                        "binary_data_output": {
                            "type": "boolean",
                            "description": "Answer every output as binary data.",
                        }
                    },
                },
                "inputs": {
                    "type": "array",
                    "minItems": 1,
                    "maxItems": 1,
                    "items": {
                        "type": "object",
                        "required": ["name", "shape", "datatype"],
                        "properties": {
                            "name": {"const": INPUT_NAME},
                            "shape": {
                                "description": (
                                    f"[N, {N_PIXELS}] or [N, {IMAGE_SIDE}, {IMAGE_SIDE}], "
                                    f"N from 1 to {limits.max_batch}."
                                ),
                                "oneOf": [
                                    {
                                        "type": "array",
                                        "prefixItems": [
                                            {
                                                "type": "integer",
                                                "minimum": 1,
                                                "maximum": limits.max_batch,
                                            },
                                            {"const": N_PIXELS},
                                        ],
                                        "minItems": 2,
                                        "maxItems": 2,
                                    },
                                    {
                                        "type": "array",
                                        "prefixItems": [
                                            {
                                                "type": "integer",
                                                "minimum": 1,
                                                "maximum": limits.max_batch,
                                            },
                                            {"const": IMAGE_SIDE},
                                            {"const": IMAGE_SIDE},
                                        ],
                                        "minItems": 3,
                                        "maxItems": 3,
                                    },
                                ],
                            },
                            "datatype": {
                                "enum": ["FP32", "UINT8"],
                                "description": "FP32: pixels in 0..1; UINT8: raw pixels 0..255.",
                            },
                            "data": {
                                "type": "array",
                                "description": "The pixels, flat or nested, row-major.",
                            },
                            "parameters": {
                                "type": "object",
                                "properties": {
                                    "binary_data_size": {
                                        "type": "integer",
                                        "minimum": 1,
                                        "description": (
                                            "Binary extension: the tensor's bytes follow the JSON "
                                            f"header (see {BINARY_HEADER}) instead of 'data'."
                                        ),
                                    }
                                },
                            },
                        },
                    },
                },
                "outputs": {
                    "type": "array",
                    "items": {
                        "type": "object",
                        "required": ["name"],
                        "properties": {
                            "name": {"enum": [OUTPUT_LABEL, OUTPUT_PROBABILITIES]},
                            "parameters": {
                                "type": "object",
                                "properties": {
                                    "binary_data": {"type": "boolean"},
                                    "classification": {
                                        "type": "integer",
                                        "minimum": 1,
                                        "maximum": N_CLASSES,
                                        "description": (
                                            'Classification extension: the k best "<p>:<digit>".'
                                        ),
                                    },
                                },
                            },
                        },
                    },
                },
            },
        },
        "V2InferenceResponse": {
            "type": "object",
            "required": ["model_name", "outputs"],
            "properties": {
                "model_name": {"type": "string"},
                "model_version": {"type": "string"},
                "id": {"type": "string"},
                "outputs": {
                    "type": "array",
                    "items": {
                        "type": "object",
                        "required": ["name", "shape", "datatype"],
                        "properties": {
                            "name": {"type": "string"},
                            "shape": {"type": "array", "items": {"type": "integer"}},
                            "datatype": {"enum": ["INT64", "FP32", "BYTES"]},
                            "data": {"type": "array"},
                            "parameters": {
                                "type": "object",
                                "properties": {"binary_data_size": {"type": "integer"}},
                            },
                        },
                    },
                },
            },
        },
        "TritonModelConfig": {
            "type": "object",
            "description": "Triton's model configuration, as in config.pbtxt.",
            "required": ["name", "platform", "max_batch_size", "input", "output"],
            "properties": {
                "name": {"type": "string"},
                "platform": {"type": "string"},
                "max_batch_size": {"type": "integer", "const": limits.max_batch},
                "input": {"type": "array", "items": {"type": "object"}},
                "output": {"type": "array", "items": {"type": "object"}},
            },
        },
    }


def _predict_operation(limits: ApiLimits) -> dict[str, Any]:
    formats = ", ".join(limits.image.formats)
    raw_image = {"schema": _ref("ImageUpload")}
    return {
        "tags": ["simple API"],
        "operationId": "predict",
        "summary": "Classify one or more digits",
        "description": (
            f"Send up to {limits.max_batch} images in one request body of at most "
            f"{limits.max_body_bytes} bytes: JSON pixel arrays or base64 {formats} strings, "
            f"one raw {formats} body, or multipart parts named `image`. Images are turned into "
            f"MNIST-style {IMAGE_SIDE}x{IMAGE_SIDE} pixels (grayscale, ink high, cropped, centred "
            "by centre of mass) before the model sees them."
        ),
        "parameters": [
            {
                "name": "top_k",
                "in": "query",
                "description": "Also return the k most likely digits of each image.",
                "schema": {"type": "integer", "minimum": 1, "maximum": N_CLASSES},
            },
            {
                "name": "return_input",
                "in": "query",
                "description": "Also return the 28x28 image the model saw, as a base64 PNG.",
                "schema": {"type": "boolean", "default": False},
            },
            {"$ref": "#/components/parameters/RequestId"},
        ],
        "requestBody": {
            "required": True,
            "content": {
                JSON: {
                    "schema": _ref("PredictRequest"),
                    "examples": {
                        "pixels": {
                            "summary": "One blank image as 784 numbers (a 1 would be ink)",
                            "value": {"images": [[0] * N_PIXELS]},
                        }
                    },
                },
                **{f"image/{fmt.lower()}": raw_image for fmt in limits.image.formats},
                "multipart/form-data": {
                    "schema": {
                        "type": "object",
                        "required": ["image"],
                        "properties": {
                            "image": {
                                "type": "array",
                                "minItems": 1,
                                "maxItems": limits.max_batch,
                                "items": _ref("ImageUpload"),
                            }
                        },
                    },
                    "encoding": {
                        "image": {
                            "contentType": ", ".join(
                                f"image/{fmt.lower()}" for fmt in limits.image.formats
                            )
                        }
                    },
                },
            },
        },
        "responses": {
            "200": _with_request_id(_json(_ref("PredictResponse"), "One prediction per image.")),
            **_errors(
                {
                    400: "Malformed JSON or multipart body.",
                    413: f"Body over {limits.max_body_bytes} bytes or more than "
                    f"{limits.max_batch} images.",
                    415: "A Content-Type other than JSON, PNG, JPEG or multipart.",
                    422: "Wrong shape, non-numbers, NaN, values outside 0..255, an empty batch, "
                    "or an image that cannot be decoded or shows no digit.",
                    503: "No model is loaded.",
                }
            ),
        },
    }


V2_ERRORS = {
    400: "A request that breaks the protocol or the model's input contract.",
    404: "No such model or version.",
    503: "No model is loaded.",
}


def _v2_get(
    operation_id: str,
    summary: str,
    ok: dict[str, Any],
    errors: dict[int, str] | None = None,
) -> dict[str, Any]:
    return {
        "get": {
            "tags": ["Open Inference Protocol"],
            "operationId": operation_id,
            "summary": summary,
            "parameters": [{"$ref": "#/components/parameters/RequestId"}],
            "responses": {"200": ok, **_errors(errors or {}, "V2Error")},
        }
    }


def _infer_operation(limits: ApiLimits, operation_id: str) -> dict[str, Any]:
    binary_header = {
        "name": BINARY_HEADER,
        "in": "header",
        "description": "Binary extension: the length of the JSON header that starts the body.",
        "schema": {"type": "integer", "minimum": 0},
    }
    return {
        "post": {
            "tags": ["Open Inference Protocol"],
            "operationId": operation_id,
            "summary": "Run the model on a batch (KServe V2 / Triton infer)",
            "description": (
                f"Up to {limits.max_batch} images per request. JSON tensors, or a JSON header "
                "followed by binary tensor data (Triton's binary data extension). Outputs "
                f"'{OUTPUT_LABEL}' (INT64 [N]) and '{OUTPUT_PROBABILITIES}' (FP32 [N, "
                f"{N_CLASSES}]); ask for binary outputs or classification top-k per output."
            ),
            "parameters": [binary_header, {"$ref": "#/components/parameters/RequestId"}],
            "requestBody": {
                "required": True,
                "content": {
                    JSON: {"schema": _ref("V2InferenceRequest")},
                    "application/octet-stream": {
                        "schema": {
                            "type": "string",
                            "format": "binary",
                            "description": (
                                f"A V2InferenceRequest JSON of {BINARY_HEADER} bytes, then the "
                                "binary tensors in input order."
                            ),
                        }
                    },
                },
            },
            "responses": {
                "200": _with_request_id(
                    {
                        "description": "The outputs; binary ones follow the JSON header.",
                        "headers": {
                            BINARY_HEADER: {
                                "description": "Present when binary outputs follow the JSON.",
                                "schema": {"type": "integer", "minimum": 0},
                            }
                        },
                        "content": {
                            JSON: {"schema": _ref("V2InferenceResponse")},
                            "application/octet-stream": {
                                "schema": {"type": "string", "format": "binary"}
                            },
                        },
                    }
                ),
                **_errors(
                    {
                        **V2_ERRORS,
                        413: f"Body over {limits.max_body_bytes} bytes.",
                    },
                    "V2Error",
                ),
            },
        }
    }


def build_document(limits: ApiLimits, version: str | None = None) -> dict[str, Any]:
    """The OpenAPI 3.1 document of the service running with ``limits``."""
    metadata = _with_request_id(_json(_ref("V2ModelMetadata"), "The model's metadata."))
    config = _with_request_id(_json(_ref("TritonModelConfig"), "Triton's model config."))
    model_paths: dict[str, Any] = {}
    model_name = {"$ref": "#/components/parameters/ModelName"}
    model_version = {"$ref": "#/components/parameters/ModelVersion"}
    for prefix, suffix, path_parameters in (
        ("/v2/models/{model}", "", [model_name]),
        ("/v2/models/{model}/versions/{version}", "_version", [model_name, model_version]),
    ):
        model_paths[prefix] = _v2_get(
            f"v2_model_metadata{suffix}", "Model metadata", metadata, errors=V2_ERRORS
        )
        model_paths[f"{prefix}/ready"] = _v2_get(
            f"v2_model_ready{suffix}",
            "Is the model ready",
            _empty("Ready."),
            errors={404: V2_ERRORS[404], 503: "Not ready: no model loaded."},
        )
        model_paths[f"{prefix}/config"] = _v2_get(
            f"v2_model_config{suffix}", "Triton's model configuration", config, errors=V2_ERRORS
        )
        model_paths[f"{prefix}/infer"] = _infer_operation(limits, f"v2_infer{suffix}")
        for path in (prefix, f"{prefix}/ready", f"{prefix}/config", f"{prefix}/infer"):
            model_paths[path]["parameters"] = path_parameters
    return {
        "openapi": OPENAPI_VERSION,
        "info": {
            "title": "mnist-service",
            "version": version or _package_version(),
            "summary": "Handwritten digit recognition: an MLP on MNIST served with onnxruntime.",
            "description": (
                "A simple JSON/image API for people (`/predict`), the Open Inference Protocol "
                "(KServe V2, with Triton's binary and classification extensions) for tools, "
                "Prometheus metrics and a page to draw digits on. Every response carries an "
                f"`{REQUEST_ID_HEADER}` header."
            ),
            "license": {"name": "MIT", "identifier": "MIT"},
        },
        "tags": [
            {"name": "simple API", "description": "For people: pixels or pictures in, digits out."},
            {"name": "Open Inference Protocol", "description": "KServe V2, as Triton speaks it."},
            {"name": "operations", "description": "Metrics and this document."},
            {"name": "page", "description": "The drawing page."},
        ],
        "paths": {
            "/": {
                "get": {
                    "tags": ["page"],
                    "operationId": "page",
                    "summary": "The page where you draw a digit and watch the prediction",
                    "responses": {
                        "200": _with_request_id(
                            {"description": "HTML", "content": {"text/html": {}}}
                        )
                    },
                }
            },
            "/predict": {"post": _predict_operation(limits)},
            "/v2": _v2_get(
                "v2_server_metadata",
                "Server metadata and extensions",
                _with_request_id(_json(_ref("V2ServerMetadata"), "The server's metadata.")),
            ),
            "/v2/health/live": _v2_get("v2_live", "Is the server alive", _empty("Alive.")),
            "/v2/health/ready": _v2_get(
                "v2_ready",
                "Is the server ready to infer",
                _empty("Ready."),
                errors={503: "Not ready: no model loaded."},
            ),
            **model_paths,
            "/metrics": {
                "get": {
                    "tags": ["operations"],
                    "operationId": "metrics",
                    "summary": "Prometheus metrics of all workers",
                    "description": (
                        "Request latency by route and status, inference and preprocessing "
                        "latency, batch sizes, predictions by digit, the served model version "
                        "and reloads. OpenMetrics when the Accept header asks for it."
                    ),
                    "responses": {
                        "200": _with_request_id(
                            {
                                "description": "The exposition.",
                                "content": {
                                    "text/plain": {"schema": {"type": "string"}},
                                    "application/openmetrics-text": {"schema": {"type": "string"}},
                                },
                            }
                        )
                    },
                }
            },
            "/openapi.json": {
                "get": {
                    "tags": ["operations"],
                    "operationId": "openapi",
                    "summary": "This document",
                    "responses": {
                        "200": _with_request_id(
                            _json({"type": "object"}, "The OpenAPI 3.1 document.")
                        )
                    },
                }
            },
            "/docs": {
                "get": {
                    "tags": ["operations"],
                    "operationId": "docs",
                    "summary": "This document as a page (Swagger UI, served locally)",
                    "responses": {
                        "200": _with_request_id(
                            {"description": "HTML", "content": {"text/html": {}}}
                        )
                    },
                }
            },
            "/page/{name}": {
                "get": {
                    "tags": ["page"],
                    "operationId": "page_asset",
                    "summary": "A script or style sheet of the drawing page",
                    "parameters": [
                        {
                            "name": "name",
                            "in": "path",
                            "required": True,
                            "schema": {"type": "string", "examples": ["app.js", "style.css"]},
                        }
                    ],
                    "responses": {
                        "200": _with_request_id({"description": "The file."}),
                        **_errors({404: "No such asset."}),
                    },
                }
            },
            "/docs/assets/{name}": {
                "get": {
                    "tags": ["operations"],
                    "operationId": "docs_asset",
                    "summary": "A script, style sheet or icon of the docs page",
                    "parameters": [
                        {
                            "name": "name",
                            "in": "path",
                            "required": True,
                            "schema": {"enum": sorted([*SWAGGER_ASSETS, "docs.js"])},
                        }
                    ],
                    "responses": {
                        "200": _with_request_id({"description": "The file."}),
                        **_errors({404: "No such asset."}),
                    },
                }
            },
        },
        "components": {
            "schemas": _schemas(limits),
            "parameters": {
                "ModelName": {
                    "name": "model",
                    "in": "path",
                    "required": True,
                    "description": "The model's name; this server serves one.",
                    "schema": {"type": "string", "examples": [MODEL_NAME]},
                },
                "ModelVersion": {
                    "name": "version",
                    "in": "path",
                    "required": True,
                    "description": "A version number; only the version being served answers.",
                    "schema": {"type": "string", "pattern": "^[1-9][0-9]*$"},
                },
                "RequestId": {
                    "name": REQUEST_ID_HEADER,
                    "in": "header",
                    "description": (
                        "Your id for the request, echoed back; replaced by a fresh one unless "
                        f"it is 1..{MAX_REQUEST_ID_LENGTH} visible ASCII characters."
                    ),
                    "schema": {
                        "type": "string",
                        "pattern": f"^[!-~]{{1,{MAX_REQUEST_ID_LENGTH}}}$",
                    },
                },
            },
            "headers": {
                "RequestId": {
                    "description": "The request's id: yours when valid, else 32 fresh hex digits.",
                    "schema": {"type": "string", "maxLength": MAX_REQUEST_ID_LENGTH},
                }
            },
        },
    }


def _package_version() -> str:
    try:
        return importlib.metadata.version("mnist-service")
    except importlib.metadata.PackageNotFoundError:
        return "0+unknown"


DOCS_PAGE = """<!DOCTYPE html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>mnist-service API</title>
<link rel="stylesheet" href="docs/assets/swagger-ui.css">
<link rel="icon" type="image/png" href="docs/assets/favicon-32x32.png">
</head>
<body>
<noscript>This page needs JavaScript; the document itself is at
<a href="openapi.json">openapi.json</a>.</noscript>
<div id="swagger-ui"></div>
<script src="docs/assets/swagger-ui-bundle.js"></script>
<script src="docs/assets/docs.js"></script>
</body>
</html>
"""

# validatorUrl null: Swagger UI would otherwise send the document to an online validator.
DOCS_SCRIPT = """window.addEventListener("load", function () {
  window.ui = SwaggerUIBundle({
    url: "openapi.json",
    dom_id: "#swagger-ui",
    deepLinking: true,
    validatorUrl: null,
    presets: [SwaggerUIBundle.presets.apis],
    layout: "BaseLayout"
  });
});
"""


def swagger_ui_dir() -> os.PathLike[str]:
    """The folder of Swagger UI's files inside the swagger-ui-py wheel."""
    return importlib.resources.files("swagger_ui").joinpath("static")  # type: ignore[return-value]


def create_blueprint(config: ServiceConfig) -> Blueprint:
    """GET /openapi.json, GET /docs and the page's assets; the limits are ``config``'s."""
    blueprint = Blueprint("openapi", __name__)
    assets = swagger_ui_dir()
    document = build_document(ApiLimits.from_config(config))

    @blueprint.get("/openapi.json")
    def openapi_document() -> Response:
        return jsonify(document)

    @blueprint.get("/docs")
    def docs_page() -> Response:
        response = Response(DOCS_PAGE, content_type="text/html; charset=utf-8")
        response.headers["X-Content-Type-Options"] = "nosniff"
        return response

    @blueprint.get("/docs/assets/<name>")
    def docs_asset(name: str) -> Response:
        if name == "docs.js":
            return Response(DOCS_SCRIPT, content_type="text/javascript; charset=utf-8")
        if name not in SWAGGER_ASSETS:
            raise NotFound(f"no docs asset {name!r}")
        # only the names listed above reach the file system
        return send_from_directory(assets, name, mimetype=SWAGGER_ASSETS[name], max_age=3600)

    return blueprint
