Feature: The connection state machine
  As a trader running a bot against TWS or IB Gateway
  I want the connection to move through known states for known reasons
  So that my bot always knows whether it may trade and recovers the same way every time

  Background:
    Given a connection machine for port 4002 with client id 7

  Scenario: A first connection succeeds
    When the bot asks to connect
    And the attempt succeeds
    Then the connection is "connected"
    And the account is selected, subscriptions are set up and the heartbeat runs

  Scenario: The gateway is down, then comes back
    When the bot asks to connect
    And the attempt fails because the connection was refused
    Then the connection is "backoff"
    And the next attempt is scheduled within 0.05 seconds
    When the retry is due
    And the attempt succeeds
    Then the connection is "connected"

  Scenario: TWS loses IB overnight and restores it with data lost
    Given the bot is connected
    When IB sends code 1100 "Connectivity between IB and Trader Workstation has been lost."
    Then the connection is "lost"
    And no order may be sent
    When IB sends code 1101 "Connectivity between IB and TWS has been restored- data lost."
    Then the connection is "connected"
    And the subscriptions are restored

  Scenario: TWS restores IB with data kept
    Given the bot is connected
    When IB sends code 1100 "Connectivity between IB and Trader Workstation has been lost."
    And IB sends code 1102 "Connectivity between IB and TWS has been restored- data maintained."
    Then the connection is "connected"
    And the subscriptions are not restored again

  Scenario: Two data farms break and come back one by one
    Given the bot is connected
    When IB sends code 2103 "Market data farm connection is broken:usfarm"
    And IB sends code 2105 "HMDS data farm connection is broken:ushmds"
    Then the connection is "degraded"
    When IB sends code 2104 "Market data farm connection is OK:usfarm"
    Then the connection is "degraded"
    When IB sends code 2106 "HMDS data farm connection is OK:ushmds"
    Then the connection is "connected"

  Scenario: Farm OK notices at connect are not warnings
    Given the bot is connected
    When IB sends code 2104 "Market data farm connection is OK:usfarm"
    And IB sends code 2158 "Sec-def data farm connection is OK:secdefil"
    Then the connection is "connected"

  Scenario: The same 1102 twice does no harm
    Given the bot is connected
    When IB sends code 1102 "Connectivity between IB and TWS has been restored- data maintained."
    And IB sends code 1102 "Connectivity between IB and TWS has been restored- data maintained."
    Then the connection is "connected"

  Scenario: The API port is reset
    Given the bot is connected
    When IB sends code 1300 "TWS socket port has been reset and this connection is being dropped. Please reconnect on the new port - 4003"
    Then the connection is "backoff"
    When the retry is due
    Then the attempt uses port 4003

  Scenario: A hung gateway is abandoned
    Given the bot is connected
    When the heartbeat is missed
    Then the connection is "backoff"

  Scenario: An unknown code changes nothing
    Given the bot is connected
    When IB sends code 9999 "Something new from IB"
    Then the connection is "connected"
