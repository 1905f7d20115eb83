"""Dispatch order, fall-through, collect-all and load failures."""

from unittest import mock

from teeth_agent import hardware
from teeth_agent.hardware import base as hw_base
from teeth_agent.hardware import generic
from teeth_agent.hardware import inventory
from tests.unit.hardware import fixtures

LEVEL = hw_base.HardwareSupport


def manager_class(name, level, **methods):
    """A manager class at ``level`` with the given interface methods."""
    body = {"evaluate_hardware_support": lambda self: level}
    body.update(methods)
    return type(name, (hw_base.HardwareManager,), body)


def decline(self):
    raise hw_base.IncompatibleHardwareMethodError()


class TestDispatchOrder(fixtures.FakeMachineTestCase):
    def test_highest_support_level_answers_first(self):
        low = manager_class("Low", LEVEL.GENERIC,
                            get_system_info=lambda self: {"vendor": "low"})
        high = manager_class("High", LEVEL.SERVICE_PROVIDER,
                             get_system_info=lambda self: {"vendor": "high"})
        mid = manager_class("Mid", LEVEL.MAINLINE,
                            get_system_info=lambda self: {"vendor": "mid"})
        dispatcher = self.build_dispatcher([("low", low), ("high", high),
                                            ("mid", mid)])
        self.assertEqual({"vendor": "high"},
                         dispatcher.dispatch("get_system_info"))
        self.assertEqual(["high", "mid", "low"],
                         [d["name"] for d in dispatcher.describe()])
        self.assertEqual(["SERVICE_PROVIDER", "MAINLINE", "GENERIC"],
                         [d["support"] for d in dispatcher.describe()])

    def test_equal_levels_keep_the_loading_order(self):
        first = manager_class("First", LEVEL.MAINLINE,
                              get_cpus=lambda self: {"count": 1})
        second = manager_class("Second", LEVEL.MAINLINE,
                               get_cpus=lambda self: {"count": 2})
        dispatcher = self.build_dispatcher([("first", first),
                                            ("second", second)])
        self.assertEqual({"count": 1}, dispatcher.dispatch("get_cpus"))
        self.assertEqual(["first", "second"],
                         dispatcher.implementers("get_cpus"))

    def test_a_declining_manager_falls_through_to_the_next(self):
        generic_like = manager_class(
            "GenericLike", LEVEL.GENERIC,
            list_block_devices=lambda self: [{"path": "/dev/sda"}])
        vendor = manager_class(
            "Vendor", LEVEL.SERVICE_PROVIDER,
            list_block_devices=decline)
        dispatcher = self.build_dispatcher([("generic", generic_like),
                                            ("vendor", vendor)])
        self.assertEqual([{"path": "/dev/sda"}],
                         dispatcher.dispatch("list_block_devices"))

    def test_a_method_no_manager_serves_raises_no_manager_error(self):
        only = manager_class("Only", LEVEL.GENERIC)
        dispatcher = self.build_dispatcher([("only", only)])
        with self.assertRaises(hardware.NoManagerError):
            dispatcher.dispatch("get_bios_settings")

    def test_a_failing_manager_stops_dispatch_and_is_named(self):
        later = mock.Mock(return_value={"count": 9})

        def broken(self):
            raise OSError("sysfs went away")

        first = manager_class("Broken", LEVEL.SERVICE_PROVIDER,
                              get_cpus=broken)
        second = manager_class("Fine", LEVEL.GENERIC,
                               get_cpus=lambda self: later())
        dispatcher = self.build_dispatcher([("broken", first),
                                            ("fine", second)])
        with self.assertRaises(hardware.DispatchError) as caught:
            dispatcher.dispatch("get_cpus")
        self.assertEqual("broken", caught.exception.manager)
        self.assertIn("broken", str(caught.exception))
        self.assertIn("sysfs went away", str(caught.exception))
        later.assert_not_called()


class TestCollectAll(fixtures.FakeMachineTestCase):
    def test_firmware_versions_are_merged_higher_level_winning(self):
        low = manager_class(
            "Low", LEVEL.GENERIC,
            get_firmware_versions=lambda self: {"bios": "1.0", "bmc": "old"})
        high = manager_class(
            "High", LEVEL.SERVICE_PROVIDER,
            get_firmware_versions=lambda self: {"bmc": "2.1", "nic0": "7"})
        silent = manager_class("Silent", LEVEL.MAINLINE,
                               get_firmware_versions=decline)
        dispatcher = self.build_dispatcher([("low", low), ("high", high),
                                            ("silent", silent)])
        self.assertEqual(
            [("high", {"bmc": "2.1", "nic0": "7"}),
             ("low", {"bios": "1.0", "bmc": "old"})],
            dispatcher.dispatch_all("get_firmware_versions"))
        self.assertEqual({"bios": "1.0", "bmc": "2.1", "nic0": "7"},
                         inventory.firmware_versions(dispatcher))

    def test_qc_checks_from_every_manager_in_order(self):
        check_a = {"name": "a", "expected": 1, "actual": 1, "pass": True}
        check_b = {"name": "b", "expected": 2, "actual": 3, "pass": False}

        def checks_a(self, spec, inventory):
            return [check_a]

        def checks_b(self, spec, inventory):
            return [check_b]

        low = manager_class("Low", LEVEL.GENERIC, run_qc_checks=checks_a)
        high = manager_class("High", LEVEL.SERVICE_PROVIDER,
                             run_qc_checks=checks_b)
        dispatcher = self.build_dispatcher([("low", low), ("high", high)])
        self.assertEqual([("high", [check_b]), ("low", [check_a])],
                         dispatcher.dispatch_all("run_qc_checks", {}, {}))

    def test_collect_all_stops_on_a_failure(self):
        def broken(self):
            raise ValueError("bad state file")

        low = manager_class("Low", LEVEL.GENERIC,
                            get_firmware_versions=lambda self: {"bios": "1"})
        high = manager_class("High", LEVEL.SERVICE_PROVIDER,
                             get_firmware_versions=broken)
        dispatcher = self.build_dispatcher([("low", low), ("high", high)])
        with self.assertRaises(hardware.DispatchError) as caught:
            dispatcher.dispatch_all("get_firmware_versions")
        self.assertEqual("high", caught.exception.manager)


class TestLoadFailures(fixtures.FakeMachineTestCase):
    def test_a_plugin_whose_constructor_raises_is_named(self):
        class Broken(hw_base.HardwareManager):
            def __init__(self, conf):
                raise RuntimeError("missing vendor library")

        with self.assertRaises(hardware.HardwareLoadError) as caught:
            self.build_dispatcher([("broken", Broken)])
        self.assertIn("broken", str(caught.exception))
        self.assertIn("missing vendor library", str(caught.exception))

    def test_a_stale_signature_is_refused_at_load_time(self):
        def update_firmware(self, component, image_path):
            return {}

        stale = manager_class("Stale", LEVEL.SERVICE_PROVIDER,
                              update_firmware=update_firmware)
        with self.assertRaises(hardware.HardwareLoadError) as caught:
            self.build_dispatcher([("stale", stale)])
        self.assertIn("update_firmware", str(caught.exception))

    def test_evaluate_raising_is_a_load_error(self):
        def evaluate(self):
            raise OSError("cannot read DMI")

        cls = type("Raising", (hw_base.HardwareManager,),
                   {"evaluate_hardware_support": evaluate})
        with self.assertRaises(hardware.HardwareLoadError) as caught:
            self.build_dispatcher([("raising", cls), ("generic",
                                   generic.GenericHardwareManager)])
        self.assertIn("raising", str(caught.exception))
        self.assertIn("cannot read DMI", str(caught.exception))

    def test_a_manager_without_evaluate_is_refused(self):
        cls = type("Lazy", (hw_base.HardwareManager,), {})
        with self.assertRaises(hardware.HardwareLoadError) as caught:
            self.build_dispatcher([("lazy", cls)])
        self.assertIn("evaluate_hardware_support", str(caught.exception))

    def test_a_class_that_is_not_a_manager_is_refused(self):
        class NotAManager:
            def __init__(self, conf):
                self.conf = conf

        with self.assertRaises(hardware.HardwareLoadError):
            self.build_dispatcher([("stranger", NotAManager)])

    def test_initialize_raising_is_a_load_error(self):
        def initialize(self):
            raise RuntimeError("BMC unreachable")

        cls = manager_class("Init", LEVEL.SERVICE_PROVIDER,
                            initialize=initialize)
        with self.assertRaises(hardware.HardwareLoadError) as caught:
            self.build_dispatcher([("init", cls)])
        self.assertIn("BMC unreachable", str(caught.exception))

    def test_managers_reporting_none_are_dropped(self):
        absent = manager_class("Absent", LEVEL.NONE)
        dispatcher = self.build_dispatcher([
            ("absent", absent), ("generic", generic.GenericHardwareManager)])
        self.assertEqual(["generic"],
                         [d["name"] for d in dispatcher.describe()])

    def test_no_supporting_manager_is_a_load_error(self):
        absent = manager_class("Absent", LEVEL.NONE)
        with self.assertRaises(hardware.HardwareLoadError):
            self.build_dispatcher([("absent", absent)])

    def test_an_enabled_manager_that_is_not_installed_is_a_load_error(self):
        with self.assertRaises(hardware.HardwareLoadError) as caught:
            hardware.load_managers(
                self.conf, enabled=["teeth-test-no-such-manager"])
        self.assertIn("teeth-test-no-such-manager", str(caught.exception))


class VendorManager(generic.GenericHardwareManager):
    """Selects itself by DMI, overrides firmware only."""

    def evaluate_hardware_support(self):
        system = self.get_system_info()
        if (system["vendor"], system["product"]) == ("Initech", "TPS-1"):
            return LEVEL.SERVICE_PROVIDER
        return LEVEL.NONE

    def get_firmware_versions(self):
        return {"bmc": "3.0"}


class TestVendorSelection(fixtures.FakeMachineTestCase):
    plugins = [("generic", generic.GenericHardwareManager),
               ("initech", VendorManager)]

    def test_vendor_manager_is_chosen_on_its_chassis(self):
        self.machine.set_dmi(sys_vendor="Initech", product_name="TPS-1",
                             bios_version="A07")
        self.machine.add_disk("sda", 10 * 2 ** 30, serial="S-1")
        dispatcher = self.build_dispatcher(self.plugins)
        self.assertEqual(["initech", "generic"],
                         [d["name"] for d in dispatcher.describe()])
        self.assertEqual(["initech", "generic"],
                         dispatcher.implementers("get_firmware_versions"))
        self.assertEqual({"bios": "A07", "bmc": "3.0"},
                         inventory.firmware_versions(dispatcher))
        # Block devices come from the inherited generic code.
        self.assertEqual(["S-1"], [d["serial"] for d in dispatcher.dispatch(
            "list_block_devices")])

    def test_vendor_manager_drops_out_on_another_chassis(self):
        self.machine.set_dmi(sys_vendor="Initech", product_name="TPS-2")
        dispatcher = self.build_dispatcher(self.plugins)
        self.assertEqual(["generic"],
                         [d["name"] for d in dispatcher.describe()])
        self.assertEqual({}, inventory.firmware_versions(dispatcher))


class Grown(hw_base.HardwareManager):
    """The interface of a later version: list_block_devices gained an
    optional keyword."""

    def list_block_devices(self, include_virtual=False):
        raise hw_base.IncompatibleHardwareMethodError()


class TestContract(fixtures.FakeMachineTestCase):
    """The contract is checked at load time, as pluggy checks hook
    implementations: required parameters match, optional ones are a
    subset, and no public method is outside the interface."""

    def check(self, cls, interface=hw_base.HardwareManager):
        hardware.check_manager(cls(self.conf), interface)

    def test_a_misspelt_public_method_is_a_load_error(self):
        def update_firmwre(self, component, image_path, version):
            return {}

        typo = manager_class("Typo", LEVEL.SERVICE_PROVIDER,
                             update_firmwre=update_firmwre)
        with self.assertRaises(hardware.UnknownManagerMethod) as caught:
            self.build_dispatcher([("typo", typo)])
        message = str(caught.exception)
        self.assertIn("Typo.update_firmwre", message)
        self.assertIn("did you mean update_firmware?", message)
        self.assertIsInstance(caught.exception, hardware.HardwareLoadError)

    def test_public_static_and_class_methods_are_checked_too(self):
        for member in (staticmethod(lambda: None),
                       classmethod(lambda cls: None)):
            cls = manager_class("Odd", LEVEL.GENERIC, get_cpu_count=member)
            with self.assertRaises(hardware.UnknownManagerMethod):
                self.check(cls)

    def test_private_helpers_and_plain_attributes_are_allowed(self):
        cls = manager_class("Tidy", LEVEL.GENERIC,
                            _read_bmc=lambda self: "2.0",
                            VENDOR="Initech",
                            get_firmware_versions=lambda self: {
                                "bmc": self._read_bmc()})
        dispatcher = self.build_dispatcher([("tidy", cls)])
        self.assertEqual({"bmc": "2.0"},
                         inventory.firmware_versions(dispatcher))

    def test_the_shipped_managers_fit(self):
        from teeth_agent.hardware import testing
        self.check(generic.GenericHardwareManager)
        for name in dir(testing):
            member = getattr(testing, name)
            if isinstance(member, type) and \
                    issubclass(member, hw_base.HardwareManager) and \
                    member is not hw_base.HardwareManager:
                self.check(member)

    def test_a_renamed_required_parameter_is_refused(self):
        def update_firmware(self, part, image_path, version):
            return {}

        cls = manager_class("Renamed", LEVEL.GENERIC,
                            update_firmware=update_firmware)
        with self.assertRaises(hardware.ManagerSignatureMismatch) as caught:
            self.check(cls)
        self.assertIn("takes part where the interface update_firmware("
                      "component, image_path, version) has component",
                      str(caught.exception))

    def test_an_extra_parameter_is_refused_even_with_a_default(self):
        def erase_block_device(self, device, method, progress, force=False):
            return {}

        cls = manager_class("Extra", LEVEL.GENERIC,
                            erase_block_device=erase_block_device)
        with self.assertRaises(hardware.ManagerSignatureMismatch) as caught:
            self.check(cls)
        self.assertIn("takes force, which the interface",
                      str(caught.exception))

    def test_catch_all_parameters_are_accepted(self):
        def erase_block_device(self, *args, **kwargs):
            return {"args": args}

        cls = manager_class("Wrapper", LEVEL.GENERIC,
                            erase_block_device=erase_block_device)
        dispatcher = self.build_dispatcher([("wrapper", cls)])
        self.assertEqual({"args": (1, 2, 3)}, dispatcher.dispatch(
            "erase_block_device", 1, 2, 3))

    def test_a_manager_may_leave_out_an_optional_keyword(self):
        # Written against the older interface: still fits the grown one.
        older = manager_class("Older", LEVEL.GENERIC,
                              list_block_devices=lambda self: ["old"])
        self.check(older, Grown)

        def newer_list(self, include_virtual=False):
            return ["new", include_virtual]
        newer = manager_class("Newer", LEVEL.GENERIC,
                              list_block_devices=newer_list)
        self.check(newer, Grown)
        dispatcher = hardware.Dispatcher(
            [(LEVEL.GENERIC, older(self.conf))], interface=Grown)
        self.assertEqual(["old"], dispatcher.dispatch(
            "list_block_devices", include_virtual=True))
        dispatcher = hardware.Dispatcher(
            [(LEVEL.GENERIC, newer(self.conf))], interface=Grown)
        self.assertEqual(["new", True], dispatcher.dispatch(
            "list_block_devices", include_virtual=True))
        self.assertEqual(["new", False], dispatcher.dispatch(
            "list_block_devices"))

    def test_a_misspelt_optional_keyword_is_refused(self):
        def misspelt(self, include_virtul=False):
            return []

        cls = manager_class("Misspelt", LEVEL.GENERIC,
                            list_block_devices=misspelt)
        with self.assertRaises(hardware.ManagerSignatureMismatch) as caught:
            self.check(cls, Grown)
        self.assertIn("did you mean include_virtual?", str(caught.exception))

    def test_an_optional_keyword_needs_a_default(self):
        def required(self, include_virtual):
            return []

        cls = manager_class("Required", LEVEL.GENERIC,
                            list_block_devices=required)
        with self.assertRaises(hardware.ManagerSignatureMismatch) as caught:
            self.check(cls, Grown)
        self.assertIn("with a default", str(caught.exception))

    def test_an_interface_method_that_is_not_a_method(self):
        cls = manager_class("Broken", LEVEL.GENERIC, get_cpus=None)
        with self.assertRaises(hardware.ManagerSignatureMismatch):
            self.check(cls)

    def test_a_keyword_no_interface_method_takes_is_the_callers_bug(self):
        cls = manager_class("Any", LEVEL.GENERIC,
                            get_cpus=lambda self, **kwargs: kwargs)
        dispatcher = self.build_dispatcher([("any", cls)])
        with self.assertRaises(TypeError):
            dispatcher.dispatch("get_cpus", verbose=True)
