"""Routers grouped by domain; app.main includes them all."""

from fastapi import APIRouter

from app.routes import (
    health,
    jobs,
    models,
    observe,
    receipts,
    retain,
    security,
    version_admin,
    versions,
)

api_router = APIRouter()
api_router.include_router(health.router)
api_router.include_router(models.router)
api_router.include_router(versions.router)
api_router.include_router(version_admin.router)
api_router.include_router(retain.router)
api_router.include_router(jobs.router)
api_router.include_router(security.router)
api_router.include_router(receipts.router)
api_router.include_router(observe.router)
