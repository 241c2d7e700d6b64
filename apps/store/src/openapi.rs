//! The OpenAPI 3 description of the JSON API, served at `/api/v1/openapi.json`.

use serde_json::{json, Value};

use crate::upload::Limits;

/// The OpenAPI document, with the server's actual limits.
pub fn document(limits: &Limits) -> Value {
    let error = json!({ "$ref": "#/components/responses/Error" });
    let product_params = json!([
        { "name": "category", "in": "path", "required": true, "schema": { "type": "string" } },
        { "name": "product", "in": "path", "required": true, "schema": { "type": "integer", "minimum": 0 } }
    ]);
    json!({
        "openapi": "3.0.3",
        "info": {
            "title": "wheretobuy store API",
            "version": "1",
            "description": "Visual search for fashion shops: upload a street photo, get the products that look like it."
        },
        "paths": {
            "/api/v1/search": {
                "post": {
                    "summary": "Search the catalogue with a photo",
                    "requestBody": {
                        "required": true,
                        "content": { "multipart/form-data": { "schema": {
                            "type": "object",
                            "required": ["image"],
                            "properties": {
                                "image": { "type": "string", "format": "binary",
                                    "description": format!("JPEG, PNG, GIF, WebP or BMP, detected from the bytes; at most {} bytes and {} pixels", limits.max_upload_bytes, limits.max_pixels) },
                                "bbox": { "type": "string", "example": "10,20,120,200",
                                    "description": "The garment's box in pixels of the photo: \"left,top,width,height\" or a JSON object with those keys" },
                                "k": { "type": "integer", "minimum": 1, "maximum": limits.max_k, "default": 12 },
                                "category": { "type": "string", "description": "Only products of this category" },
                                "metric": { "type": "string", "description": "Distance metric; defaults to the index's" }
                            }
                        } } }
                    },
                    "responses": {
                        "200": { "description": "The best distinct products, best first",
                            "content": { "application/json": { "schema": { "$ref": "#/components/schemas/SearchAnswer" } } } },
                        "400": error, "408": error, "413": error, "415": error, "422": error,
                        "429": error, "503": error
                    }
                }
            },
            "/api/v1/categories": {
                "get": {
                    "summary": "Categories and their product counts",
                    "responses": { "200": { "description": "Categories",
                        "content": { "application/json": { "schema": { "type": "object", "properties": {
                            "categories": { "type": "array", "items": { "type": "object", "properties": {
                                "name": { "type": "string" }, "products": { "type": "integer" } } } } } } } } },
                        "503": error }
                }
            },
            "/api/v1/products/{category}/{product}": {
                "get": {
                    "summary": "One product's metadata and shop photos",
                    "parameters": product_params,
                    "responses": { "200": { "description": "The product",
                        "content": { "application/json": { "schema": { "$ref": "#/components/schemas/Product" } } } },
                        "404": error, "503": error }
                }
            },
            "/api/v1/products/{category}/{product}/similar": {
                "get": {
                    "summary": "Products similar to this one, from its stored embeddings",
                    "parameters": product_params.as_array().cloned().unwrap_or_default().into_iter().chain([
                        json!({ "name": "k", "in": "query", "schema": { "type": "integer", "minimum": 1, "maximum": limits.max_k, "default": 12 } })
                    ]).collect::<Vec<_>>(),
                    "responses": { "200": { "description": "Similar products, best first",
                        "content": { "application/json": { "schema": { "$ref": "#/components/schemas/SearchAnswer" } } } },
                        "400": error, "404": error, "429": error, "503": error }
                }
            }
        },
        "components": {
            "schemas": {
                "Hit": { "type": "object", "required": ["category", "product", "score", "photo", "image_url", "name"], "properties": {
                    "category": { "type": "string" },
                    "product": { "type": "integer" },
                    "score": { "type": "number", "description": "Similarity, higher is closer" },
                    "photo": { "type": "integer", "description": "The shop photo that matched best" },
                    "image_url": { "type": "string" },
                    "name": { "type": "string" } } },
                "SearchAnswer": { "type": "object", "required": ["results", "took_ms", "model"], "properties": {
                    "results": { "type": "array", "items": { "$ref": "#/components/schemas/Hit" } },
                    "took_ms": { "type": "number" },
                    "model": { "type": "string" } } },
                "Product": { "type": "object", "properties": {
                    "category": { "type": "string" },
                    "product": { "type": "integer" },
                    "name": { "type": "string" },
                    "attributes": { "type": "object", "additionalProperties": { "type": "string" } },
                    "photos": { "type": "array", "items": { "type": "integer" } },
                    "image_urls": { "type": "array", "items": { "type": "string" } } } },
                "Error": { "type": "object", "required": ["error", "detail"], "properties": {
                    "error": { "type": "string", "description": "A short code such as bad_image or not_found" },
                    "detail": { "type": "string" } } }
            },
            "responses": {
                "Error": { "description": "An error. 408: the body did not arrive in time; 429: this client already has its share of the search queue; 503: the queue is full, the search waited past the queue deadline, or the store is starting. 429 and 503 answers carry Retry-After",
                    "content": { "application/json": { "schema": { "$ref": "#/components/schemas/Error" } } } }
            }
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn documents_every_route_with_the_real_limits() {
        let doc = document(&Limits::default());
        let paths = doc["paths"].as_object().unwrap();
        for path in [
            "/api/v1/search",
            "/api/v1/categories",
            "/api/v1/products/{category}/{product}",
            "/api/v1/products/{category}/{product}/similar",
        ] {
            assert!(paths.contains_key(path), "{path}");
        }
        let k = &doc["paths"]["/api/v1/search"]["post"]["requestBody"]["content"]
            ["multipart/form-data"]["schema"]["properties"]["k"];
        assert_eq!(k["maximum"], 100);
    }
}
