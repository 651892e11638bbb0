"""What the REG checks share: the mandatory categories of a city's pack (REG-3), and a site and a
location as a registration, a move and a declaration check them (REG-2)."""

from __future__ import annotations

from psvis import validate as v
from psvis.errors import InvalidArgument
from psvis.registry.v1 import registry_pb2 as reg
from psvis.rulepack import RulePack

CRS = "CGCS2000"


def mandatory_categories(pack: RulePack) -> dict[str, str]:
    rule = pack.rule("sites.mandatory")
    return (
        {} if rule.silent else {c["category"]: c["article"] for c in rule.param("categories", [])}
    )


def site(site: reg.Site, field: str, pack: RulePack) -> None:
    v.identifier(site.site_id, f"{field}.site_id")
    allowed = set(mandatory_categories(pack)) | {"other"}
    v.one_of(site.category, allowed, f"{field}.category")
    v.required(site.address, f"{field}.address")
    v.address_code(site.address_code, f"{field}.address_code")
    location(site, f"{field}.location")


def location(placed: reg.Site | reg.Camera | reg.CameraPlacement, field: str) -> None:
    """REG-2 (Wuhan 13 统一空间坐标): every site and camera has a location, in one coordinate
    system, CGCS2000 (an empty crs says so too); a missing location is not (0, 0)."""
    if not placed.HasField("location"):
        raise InvalidArgument(f"{field} is required (longitude and latitude, CGCS2000)")
    point = placed.location
    if point.crs not in ("", CRS):
        raise InvalidArgument(
            f"{field}.crs {v.shown(point.crs)}: locations are given in {CRS}, the one"
            " coordinate system of the catalogue (REG-2)"
        )
    v.coordinates(point.longitude, point.latitude, field)
